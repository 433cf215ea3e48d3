"""What a benchmark run measures and at what size: the command line, parsed into `BenchConfig`.

Kept free of heavy imports: `modelreg --help` builds this parser.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("throughput", "latency", "lookup", "large", "replay", "trust", "scan", "plaintext", "soak", "scaleout",
          "resources")
# Asked for by name (--only ...,plaintext,soak,scaleout): the plaintext comparison starts a second
# broker and pipeline; the soak kills services for ten minutes; the scale-out runs two pipelines
# on a three-broker cluster of its own.
OPT_IN_PHASES = ("plaintext", "soak", "scaleout")
# Phases that start every service they measure: run alone, the stack's own services are not started.
SELF_CONTAINED_PHASES = ("soak", "scaleout")
DEFAULT_PHASES = tuple(p for p in PHASES if p not in OPT_IN_PHASES)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class BenchConfig:
    phases: tuple[str, ...] = DEFAULT_PHASES
    versions: int = 2000          # throughput: versions published as fast as possible
    models: int = 20              # ... spread over this many models
    rate: float = 50.0            # latency: offered load, versions/s
    duration: float = 60.0        # ... for this long
    lookup_versions: int = 100_000
    lookup_models: int = 1000
    lookup_requests: int = 20_000  # per measured series (200 and 304)
    concurrency: int = 1          # keep-alive connections driving the API (one poller: latency, not queueing)
    large_bytes: int = 2 * 1024**3
    replay_max_events: int | None = None  # None: the whole registry.audit topic
    soak_seconds: float = 600.0   # soak: registrations flow and services are SIGKILLed for this long
    timeout: float = 600.0        # the longest any phase waits for the pipeline
    api_url: str = field(default_factory=lambda: f"http://127.0.0.1:{os.environ.get('MODELREG_API_PORT', '8080')}")
    out: Path = RESULTS_DIR
    keep: bool = False
    compare_mlflow: bool = False
    seed: int = 7

    def has(self, phase: str) -> bool:
        return phase in self.phases

    @property
    def needs_stack_services(self) -> bool:
        """Whether any chosen phase measures the services running on the stack."""
        return any(p not in SELF_CONTAINED_PHASES for p in self.phases)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["phases"] = list(self.phases)
        return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    parser.add_argument("--only", default=",".join(DEFAULT_PHASES), metavar="PHASES",
                        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all but plaintext, "
                             "which runs the throughput load again on a PLAINTEXT broker of its own; soak, "
                             "which SIGKILLs services of a pipeline of its own at random while versions flow; "
                             "and scaleout, which runs the throughput load with 1 and then 2 processes of every "
                             "service on a three-broker cluster, $MODELREG_SCALEOUT_STACK_DIR's or one it "
                             "starts on free ports and removes)")
    parser.add_argument("--versions", type=_positive(int), default=d.versions,
                        help=f"throughput: versions to push through the pipeline (default {d.versions})")
    parser.add_argument("--models", type=_positive(int), default=d.models,
                        help=f"throughput: models they belong to (default {d.models})")
    parser.add_argument("--rate", type=_positive(float), default=d.rate,
                        help=f"latency: offered load in versions/s (default {d.rate:g})")
    parser.add_argument("--duration", type=_positive(float), default=d.duration,
                        help=f"latency: seconds of offered load (default {d.duration:g})")
    parser.add_argument("--lookup-versions", type=_positive(int), default=d.lookup_versions,
                        help=f"champion lookup: versions seeded into the view tables (default {d.lookup_versions})")
    parser.add_argument("--lookup-models", type=_positive(int), default=d.lookup_models,
                        help=f"champion lookup: models they belong to (default {d.lookup_models})")
    parser.add_argument("--lookup-requests", type=_positive(int), default=d.lookup_requests,
                        help=f"champion lookup: requests per measured series (default {d.lookup_requests})")
    parser.add_argument("--concurrency", type=_positive(int), default=d.concurrency,
                        help=f"champion lookup: keep-alive connections (default {d.concurrency})")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--large-gib", type=_positive(float), default=None,
                      help="large artifact: size in GiB (default 2)")
    size.add_argument("--large-mib", type=_positive(float), default=None,
                      help="large artifact: size in MiB (for small runs)")
    parser.add_argument("--replay-max-events", type=_positive(int), default=None, metavar="N",
                        help="replay: only about the last N audit events (default: the whole topic)")
    parser.add_argument("--soak-seconds", type=_positive(float), default=d.soak_seconds,
                        help=f"soak: seconds of flow and random SIGKILLs (default {d.soak_seconds:g})")
    parser.add_argument("--timeout", type=_positive(float), default=d.timeout,
                        help=f"longest wait for the pipeline in any phase, seconds (default {d.timeout:g})")
    parser.add_argument("--api-url", default=None,
                        help=f"the HTTP API to measure; started (`modelreg run api`) if nothing answers "
                             f"there (default {d.api_url})")
    parser.add_argument("--out", type=Path, default=d.out,
                        help="where <timestamp>.json and <timestamp>.png go (default bench/results)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the versions seeded for the champion lookup")
    parser.add_argument("--compare-mlflow", action="store_true",
                        help="also measure an MLflow server (PostgreSQL backend) side by side; installs "
                             "mlflow into bench/.mlflow-venv on first use")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed for the QA metrics")


def from_args(args: argparse.Namespace) -> BenchConfig:
    phases = tuple(p.strip() for p in args.only.split(",") if p.strip())
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        raise ValueError(f"--only: unknown phase(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(PHASES)}")
    if args.large_mib is not None:
        large = int(args.large_mib * 1024**2)
    else:
        large = int((args.large_gib if args.large_gib is not None else 2.0) * 1024**3)
    if args.lookup_models > args.lookup_versions:
        raise ValueError("--lookup-models cannot exceed --lookup-versions")
    defaults = BenchConfig()
    return BenchConfig(
        phases=tuple(p for p in PHASES if p in phases), versions=args.versions, models=min(args.models, args.versions),
        rate=args.rate, duration=args.duration, lookup_versions=args.lookup_versions,
        lookup_models=args.lookup_models, lookup_requests=args.lookup_requests, concurrency=args.concurrency,
        large_bytes=large, replay_max_events=args.replay_max_events, soak_seconds=args.soak_seconds,
        timeout=args.timeout,
        api_url=(args.api_url or defaults.api_url).rstrip("/"), out=args.out, keep=args.keep,
        compare_mlflow=args.compare_mlflow, seed=args.seed)


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value
    return parse
