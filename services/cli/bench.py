"""`modelreg bench`: the benchmark (the `bench` package, installed with modelreg; its chart
needs the `bench` extra: `pip install 'modelreg[bench]'`, which `make install` includes)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from bench import config as bench_config
from services.cli.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "bench", help="benchmark the running local stack (throughput, latency, lookup, large artifact, replay)",
        description="Benchmark modelreg against the local stack (started if needed, services as processes). "
                    "Prints a table with the issue's targets, writes bench/results/<timestamp>.json and .png.")
    bench_config.add_arguments(parser)


def command(args: argparse.Namespace) -> int:
    # Checked before the run, not when the chart is drawn after minutes of measuring.
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("`modelreg bench` draws its chart with matplotlib: install the bench extra "
                        "(pip install 'modelreg[bench]'; `make install` does)")
    try:
        config = bench_config.from_args(args)
    except ValueError as exc:
        print(f"modelreg: error: {exc}", file=sys.stderr)
        return 2  # bad usage, like argparse's own errors
    from bench import run  # the phases import the stack, the SDK and the clients: only when run

    results = run.run(config)
    return 1 if results["errors"] else 0
