"""`modelreg register | evaluate | promote | restore`: the SDK's calls from a shell."""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.cli.errors import UserError
from shared.events import STAGES


def add_parsers(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    register = commands.add_parser("register", help="upload an artifact and publish model.registered")
    register.add_argument("name")
    register.add_argument("--artifact", required=True,
                          help="a local file or directory, or an s3:// URI (a prefix ending in '/': a directory)")
    register.add_argument("--version", type=int, help="default: the registry assigns the next")
    register.add_argument("--metric", action="append", default=[], metavar="K=V", help="training metric")
    register.add_argument("--param", action="append", default=[], metavar="K=V")
    register.add_argument("--tag", action="append", default=[], metavar="K=V")
    register.add_argument("--format", help="pickle, onnx, ... (default: from the file name)")
    register.add_argument("--description")
    register.add_argument("--dataset", metavar="URI[@VERSION]")
    register.add_argument("--run-id")
    register.add_argument("--registered-by", help="default: modelreg/cli")

    evaluate = commands.add_parser("evaluate", help="publish metrics.evaluated (a QA or monitor result)")
    evaluate.add_argument("name")
    evaluate.add_argument("version", type=int)
    evaluate.add_argument("--suite", required=True)
    evaluate.add_argument("--metric", action="append", default=[], metavar="K=V", required=True)
    evaluate.add_argument("--environment", default="offline", choices=("offline", "staging", "production"))
    outcome = evaluate.add_mutually_exclusive_group()
    outcome.add_argument("--passed", dest="passed", action="store_const", const=True)
    outcome.add_argument("--failed", dest="passed", action="store_const", const=False)
    evaluate.add_argument("--evaluator")

    promote = commands.add_parser("promote", help="publish promotion.requested (approvers only)")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--to", dest="to_stage", required=True, choices=STAGES)
    promote.add_argument("--actor", required=True)
    promote.add_argument("--reason", required=True)

    restore = commands.add_parser("restore", help="bring an archived version back to stage none, its artifact out "
                                                  "of cold storage (approvers only; promotion.requested to none)")
    restore.add_argument("name")
    restore.add_argument("version", type=int)
    restore.add_argument("--actor", required=True)
    restore.add_argument("--reason", required=True)
    restore.set_defaults(to_stage="none")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from services.cli.errors import UserError

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--{what} expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _metrics(items: list[str]) -> dict[str, float]:
    from services.cli.errors import UserError

    metrics = {}
    for key, value in _pairs(items, "metric").items():
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--metric {key}={value!r}: the value must be a number") from None
        if not math.isfinite(number):
            raise UserError(f"--metric {key}={value!r}: the value must be finite")
        metrics[key] = number
    return metrics


def _params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in _pairs(items, "param").items():
        for cast in (int, float):
            try:
                params[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key] = value
    return params


def _invalid(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "input"
    return f"{where}: {first['msg']}"


def command(args: argparse.Namespace) -> int:
    """Check every argument against the contract first, then connect and publish."""
    from shared.events import MetricsEvaluatedData, PromotionRequestedData
    from shared.sdk import Registry
    from shared.settings import load_settings

    try:
        if args.command == "register":
            request = _register_request(args)
        elif args.command == "evaluate":
            metrics = _metrics(args.metric)
            MetricsEvaluatedData(name=args.name, version=args.version, suite=args.suite,
                                 environment=args.environment, metrics=metrics, passed=args.passed)
        else:
            PromotionRequestedData(name=args.name, version=args.version, to_stage=args.to_stage,
                                   actor=args.actor, reason=args.reason)
    except ValidationError as exc:
        raise UserError(_invalid(exc)) from None
    settings = load_settings()

    async def run() -> str:
        async with Registry(settings, source="modelreg/cli") as registry:
            if args.command == "register":
                return await _register(registry, args, request)
            if args.command == "evaluate":
                event_id = await registry.evaluate(
                    args.name, args.version, suite=args.suite, metrics=metrics,
                    environment=args.environment, passed=args.passed, evaluator=args.evaluator)
                return f"published metrics.evaluated {event_id} for {args.name} v{args.version}"
            event_id = await registry.request_promotion(args.name, args.version, to_stage=args.to_stage,
                                                        actor=args.actor, reason=args.reason)
            move = "restore from the archive" if args.command == "restore" else f"-> {args.to_stage}"
            return (f"published promotion.requested {event_id}: {args.name} v{args.version} {move} by "
                    f"{args.actor} (follow it with `modelreg audit tail --model {args.name}`)")

    try:
        print(asyncio.run(asyncio.wait_for(run(), timeout=600)))
    except ValidationError as exc:
        raise UserError(_invalid(exc)) from None
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    except TimeoutError:
        raise UserError("timed out talking to Kafka or S3; is the stack up? (`modelreg stack status`)") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("aiokafka", "botocore", "aiobotocore")):
            raise UserError(f"{type(exc).__name__}: {exc}; is the stack up? (`modelreg stack status`)") from None
        raise
    return 0


def _register_request(args: argparse.Namespace) -> dict[str, Any]:
    from shared.events import ArtifactSpec, ModelRegisteredData

    if not args.artifact.startswith("s3://") and not Path(args.artifact).is_file():
        if not Path(args.artifact).is_dir():
            raise UserError(f"--artifact {args.artifact!r}: no such file or directory")
        _check_directory(Path(args.artifact))
    dataset = None
    if args.dataset:
        uri, _, version = args.dataset.partition("@")
        dataset = {"uri": uri, **({"version": version} if version else {})}
    request = {"version": args.version, "metrics": _metrics(args.metric), "params": _params(args.param),
               "tags": _pairs(args.tag, "tag"), "dataset": dataset, "description": args.description,
               "registered_by": args.registered_by, "run_id": args.run_id}
    placeholder = ArtifactSpec(uri="s3://placeholder/key", sha256="0" * 64, size_bytes=0, format=args.format)
    ModelRegisteredData(name=args.name, artifact=placeholder,
                        **{k: v for k, v in request.items() if v is not None})
    return request


def _check_directory(root: Path) -> None:
    """A directory is checked before any upload: safe paths, no escaping symlinks, few enough files."""
    from shared.directories import DirectoryRefused, walk
    from shared.manifest import MAX_MANIFEST_FILES

    try:
        files = walk(root, MAX_MANIFEST_FILES)
    except DirectoryRefused as refused:
        raise UserError(f"--artifact {str(root)!r}: {refused.message}") from None
    if len(files) > MAX_MANIFEST_FILES:
        raise UserError(f"--artifact {str(root)!r}: more than {MAX_MANIFEST_FILES} files")
    if not files:
        raise UserError(f"--artifact {str(root)!r}: an empty directory")


async def _register(registry: Any, args: argparse.Namespace, request: dict[str, Any]) -> str:
    path = Path(args.artifact)
    bar = _progress(path) if path.is_file() or path.is_dir() else None
    try:
        event_id = await registry.register(args.name, args.artifact, format=args.format,
                                           progress=bar.advance if bar else None, **request)
    finally:
        if bar:
            bar.close()
    return f"published model.registered {event_id} for {args.name} (its correlation id)"


class _progress:
    """A rich progress bar for the upload, fed by boto3's transfer callbacks (any thread)."""

    def __init__(self, path: Path) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self._progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), transient=False)
        total = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
                 else path.stat().st_size)
        self._task = self._progress.add_task(f"uploading {path.name}", total=total)
        self._progress.start()

    def advance(self, done: int) -> None:
        self._progress.update(self._task, advance=done)

    def close(self) -> None:
        self._progress.stop()
