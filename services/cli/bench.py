"""`modelreg bench`: the benchmark (the `bench` package at the repository root).

The package is not installed with modelreg; from a source checkout (an editable install, as
`make install` does) it is found next to `services/`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path
from types import ModuleType

from services.cli.errors import UserError


def _bench(module: str) -> ModuleType:
    root = str(Path(__file__).resolve().parents[2])
    try:
        return importlib.import_module(f"bench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", f"bench.{module}") or root in sys.path:
            raise
    sys.path.append(root)
    try:
        return importlib.import_module(f"bench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name in ("bench", f"bench.{module}"):
            raise UserError("the benchmark lives in the source checkout (bench/): run it from there") from None
        raise


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "bench", help="benchmark the running local stack (throughput, latency, lookup, large artifact, replay)",
        description="Benchmark modelreg against the local stack (started if needed, services as processes). "
                    "Prints a table with the issue's targets, writes bench/results/<timestamp>.json and .png.")
    with contextlib.suppress(UserError):  # an installed copy without the checkout: `command` says so
        _bench("config").add_arguments(parser)


def command(args: argparse.Namespace) -> int:
    config_module = _bench("config")
    try:
        config = config_module.from_args(args)
    except ValueError as exc:
        print(f"modelreg: error: {exc}", file=sys.stderr)
        return 2  # bad usage, like argparse's own errors
    results = _bench("run").run(config)
    return 1 if results["errors"] else 0
