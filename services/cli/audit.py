"""`modelreg audit tail | verify`: read the hash-chained audit log in PostgreSQL.

    modelreg audit tail [--model NAME] [--limit N] [--follow] [--json]
    modelreg audit verify [--json]

`tail` prints the newest records as a table (or JSON lines) and with `--follow` keeps printing
new ones until Ctrl-C. `verify` walks the whole chain against its head and against the audit
writer's signed checkpoints in S3 (`checkpoints/`, signatures checked with the keyring,
MODELREG_KEYRING_FILE): exit 0 when intact, 1 with one line per problem (naming the row's seq
and event id) when not, so a chain someone rewrote and re-hashed in the database is caught.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import asyncpg

POLL_SECONDS = 0.5
FOLLOW_BATCH = 500
HASH_PREFIX = 16
REASON_WIDTH = 120
CONNECT_TIMEOUT = 5.0

# Column: (header, minimum width, right-aligned)
_COLUMNS = (("SEQ", 6, True), ("TIME (UTC)", 19, False), ("ACTION", 14, False),
            ("MODEL", 20, False), ("VERSION", 7, True), ("FROM->TO", 20, False),
            ("ACTOR", 20, False), ("REASON", 0, False))


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add `audit` and its actions to the `modelreg` sub-parsers `commands`."""
    audit = commands.add_parser("audit", help="the tamper-evident audit log: tail it, verify its chain",
                                description="Read the hash-chained audit log in PostgreSQL.")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    tail = actions.add_parser("tail", help="the newest audit records (and new ones with --follow)")
    tail.add_argument("--model", metavar="NAME", default=None, help="only this model's records")
    tail.add_argument("--limit", metavar="N", type=_positive, default=20,
                      help="how many of the newest records (default: 20)")
    tail.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new records until Ctrl-C")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    verify = actions.add_parser("verify", help="check the whole hash chain against its head and the signed "
                                               "checkpoints; exit 1 if broken")
    verify.add_argument("--json", action="store_true", help="the result as one JSON object")
    return audit


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` after `modelreg audit`, parsed as the `modelreg` command would."""
    parser = argparse.ArgumentParser(prog="modelreg")
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser(commands)
    return parser.parse_args(["audit", *argv])


def command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0 if getattr(args, "follow", False) else 130


async def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`command` for callers already in an event loop; output goes to `out` (stdout)."""
    from services.cli.errors import UserError
    from shared.settings import load_settings

    out = out or sys.stdout
    settings = load_settings()
    where = _describe(settings.dsn)
    conn = await _connect(settings.dsn, where)
    try:
        if args.audit_command == "tail":
            return await _tail(conn, args, out)
        if args.audit_command == "verify":
            return await _verify(conn, args, out)
        raise UserError(f"unknown audit action {args.audit_command!r}")
    except asyncpg.UndefinedTableError:
        raise UserError(f"the database {where} lacks the audit tables: run `modelreg migrate`") from None
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        raise UserError(f"lost the connection to PostgreSQL at {where}: {_why(exc)}") from None
    finally:
        await _close(conn)


async def _connect(dsn: str, where: str) -> asyncpg.Connection:
    from services.cli.errors import UserError

    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, command_timeout=60)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UserError(f"cannot connect to PostgreSQL at {where}: {_why(exc)}") from None


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except (Exception, asyncio.CancelledError):
        conn.terminate()


def _describe(dsn: str) -> str:
    """host:port/database, never the password."""
    parts = urlsplit(dsn)
    port: int | str
    try:
        port = parts.port or 5432
    except ValueError:
        port = "?"
    return f"{parts.hostname or '?'}:{port}{parts.path or '/'}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g}s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


# ---------------------------------------------------------------------------- tail


async def _tail(conn: asyncpg.Connection, args: argparse.Namespace, out: TextIO) -> int:
    from services.audit import store

    rows = await store.tail(conn, model=args.model, limit=args.limit)
    widths = _widths(rows)
    if not args.json:
        _write(out, _line(widths, [c[0] for c in _COLUMNS]))
        if not rows and not args.follow:
            _write(out, "(no audit records" + (f" for {args.model})" if args.model else ")"))
    for row in rows:
        _write(out, _render(row, widths, args.json))
    if not args.follow:
        return 0
    last = rows[-1]["seq"] if rows else 0
    while True:
        await asyncio.sleep(POLL_SECONDS)
        for row in await store.tail(conn, model=args.model, limit=FOLLOW_BATCH, after_seq=last):
            _write(out, _render(row, widths, args.json))
            last = row["seq"]


def _render(row: dict[str, Any], widths: list[int], as_json: bool) -> str:
    if as_json:
        return json.dumps(_jsonable(row), separators=(",", ":"), ensure_ascii=False)
    return _line(widths, _cells(row))


def _cells(row: dict[str, Any]) -> list[str]:
    stages = ""
    if row["from_stage"] or row["to_stage"]:
        stages = f"{row['from_stage'] or '-'}->{row['to_stage'] or '-'}"
    reason = " ".join((row["reason"] or "").split())
    if len(reason) > REASON_WIDTH:
        reason = reason[:REASON_WIDTH - 1] + "…"
    time = row["occurred_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return [str(row["seq"]), time, row["action"], row["name"],
            "" if row["version"] is None else str(row["version"]), stages, row["actor"], reason]


def _widths(rows: list[dict[str, Any]]) -> list[int]:
    widths = [max(len(header), minimum) for header, minimum, _ in _COLUMNS]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, _cells(row), strict=True)]
    widths[-1] = 0
    return widths


def _line(widths: list[int], cells: list[str]) -> str:
    parts = [cell.rjust(width) if right else cell.ljust(width)
             for cell, width, (_, _, right) in zip(cells, widths, _COLUMNS, strict=True)]
    return "  ".join(parts).rstrip()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return value
    return {key: convert(value) for key, value in row.items()}


def _write(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


# ---------------------------------------------------------------------------- verify


async def _verify(conn: asyncpg.Connection, args: argparse.Namespace, out: TextIO) -> int:
    from services.audit import store
    from services.audit.checkpoint import authentic
    from services.cli.errors import UserError
    from shared.settings import load_settings

    settings = load_settings()
    checkpoints, unreadable = await _checkpoints(settings)
    forged: list[Any] = []
    if checkpoints:
        checkpoints, forged = authentic(checkpoints, _keyring(settings))
    try:
        result = await store.verify(conn, checkpoints)
    except store.MissingHead as exc:
        raise UserError(f"{exc}: run `modelreg migrate`") from None
    problems = [*unreadable, *forged, *result.problems]
    newest = max(checkpoints, key=lambda c: c.seq) if checkpoints else None
    if args.json:
        _write(out, json.dumps({
            "intact": not problems, "records": result.count,
            "head": {"seq": result.head.last_seq, "hash": result.head.last_hash,
                     "records": result.head.row_count},
            "checkpoints": {"count": len(checkpoints), "newest_seq": newest.seq if newest else None},
            "problems": [p.as_dict() for p in problems],
        }, separators=(",", ":")))
    elif not problems:
        if newest is None:
            coverage = "no signed checkpoints yet: the chain was checked against itself only"
        else:
            coverage = (f"{len(checkpoints)} signed checkpoint(s) agree, the newest at seq {newest.seq} "
                        f"({newest.time.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)")
        _write(out, f"audit chain intact: {result.count} records, "
                    f"head {result.head.last_hash[:HASH_PREFIX]}; {coverage}")
    else:
        for problem in problems:
            _write(out, str(problem))
        print(f"audit chain broken: {len(problems)} problem(s) in {result.count} records",
              file=sys.stderr)
    return 0 if not problems else 1


async def _checkpoints(settings: Any) -> tuple[list[Any], list[Any]]:
    """The signed checkpoints in the registry bucket (and problems with unreadable ones)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from services.audit.checkpointer import CheckpointObjects
    from services.cli.errors import UserError
    from shared.storage import ObjectStore

    try:
        async with ObjectStore(settings) as objects:
            return await CheckpointObjects(objects).all()
    except (BotoCoreError, ClientError, OSError) as exc:
        raise UserError(f"cannot read the audit checkpoints in s3://{settings.s3_bucket}/checkpoints/ "
                        f"({settings.s3_endpoint_url or 'AWS'}): {_why(exc)}") from None


def _keyring(settings: Any) -> Any:
    """The keyring to check checkpoint signatures with: MODELREG_KEYRING_FILE, else the local
    stack's."""
    from services.cli.errors import UserError
    from services.cli.keys import keyring_path
    from shared.keys import KeyFileError, Keyring

    try:
        return Keyring.load(keyring_path(settings.keyring_file))
    except KeyFileError as exc:
        raise UserError(f"signed checkpoints exist but the keyring to check them is not available: {exc} "
                        "(set MODELREG_KEYRING_FILE)") from None
