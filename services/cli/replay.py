"""`modelreg replay`: rebuild the registry view from `registry.audit` and compare."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from services.cli.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("replay", help="rebuild the read tables from registry.audit and report "
                                                "any difference from the live ones and from audit_log")
    parser.add_argument("--from-offset", type=int, default=None, metavar="N",
                        help="start each partition at offset N (no comparison: a partial rebuild)")
    parser.add_argument("--keep", action="store_true", help="keep the rebuilt schema for inspection")
    parser.add_argument("--json", action="store_true", help="the report as JSON")


def command(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.audit.replay import replay
    from shared.settings import load_settings

    settings = load_settings()
    quiet = args.json or not sys.stderr.isatty()
    bar = Progress(TextColumn("replaying registry.audit"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:,.0f} events/s"), TimeRemainingColumn(), disable=quiet)
    task = bar.add_task("replay", total=None, rate=0.0)
    started = asyncio.get_event_loop_policy().new_event_loop().time  # monotonic clock for the rate

    def progress(done: int, total: int) -> None:
        elapsed = max(started() - t0, 1e-6)
        bar.update(task, completed=done, total=total, rate=done / elapsed)

    t0 = started()
    try:
        with bar:
            report = asyncio.run(replay(settings, from_offset=args.from_offset, keep=args.keep, progress=progress))
    except (OSError, ConnectionError) as exc:
        raise UserError(f"cannot reach Kafka or PostgreSQL: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("aiokafka", "asyncpg")):
            raise UserError(f"{type(exc).__name__}: {exc}") from None
        raise
    if args.json:
        print(json.dumps({"events": report.events, "duplicates_skipped": report.duplicates,
                          "invalid_skipped": report.skipped, "forged_skipped": report.forged,
                          "seconds": round(report.seconds, 3),
                          "events_per_second": round(report.rate), "schema": report.schema if args.keep else None,
                          "differences": [str(d) for d in report.differences]}, indent=2))
    else:
        print(f"replayed {report.events:,} audit events in {report.seconds:.2f}s ({report.rate:,.0f} events/s)"
              + (f"; skipped {report.duplicates} re-sent duplicates" if report.duplicates else "")
              + (f"; left out {report.forged} forged records" if report.forged else "")
              + (f"; kept in schema {report.schema}" if args.keep else ""))
        if args.from_offset is not None:
            print("a partial rebuild (--from-offset): not compared with the live tables")
        elif not report.differences:
            print("no difference: audit_log and the live read tables are exactly what registry.audit says")
        for difference in report.differences:
            print(f"DIFFERENCE {difference}")
    return 1 if report.differences else 0
