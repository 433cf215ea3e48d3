"""`modelreg dlq list | show | redrive`: dead letters people can act on.

    modelreg dlq list [--service S] [--kind K] [--since T] [--limit N] [--json]
    modelreg dlq show ID [--json]          # the original bytes (as text where they are), the error, audit
    modelreg dlq redrive ID | --kind K [--service S] [--actor A] [--wait SECONDS]
    modelreg dlq outbox list [--service S] [--all] [--json]   # events Kafka refused to take
    modelreg dlq outbox retry ID... | --service S | --all     # send them again, first in line
    modelreg dlq outbox discard ID... [--actor A]             # give up; the model's later events go

`--since` takes RFC 3339 (2026-11-30T04:00:00Z) or an age (90s, 15m, 2h, 7d). A redrive is asked
for here and performed by the audit writer (services/audit/dlq.py says why), which republishes
the original record to its topic and records a `redriven` audit record; asking again for a
letter already asked for changes nothing. The command waits for the audit writer by default.
An outbox event Kafka refuses for good (no ACL for its topic, topic unknown, too large, not
serializable) is parked rather than retried for ever, and holds back its model's later events on
its topic (shared/outbox.py); `dlq outbox` shows and releases them.
Exit codes: 0 done, 1 not found or failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.cli.errors import UserError

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_WORD = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ACTOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/:-]{0,127}$")


def parse_since(text: str, now: datetime) -> datetime:
    """RFC 3339 with a zone, or an age before `now` (90s, 15m, 2h, 7d)."""
    if match := _AGE.match(text.strip()):
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither RFC 3339 (2026-11-30T04:00:00Z) nor an age (90s, 15m, 2h, 7d)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z or an offset")
    return moment


def _since(text: str) -> datetime:
    try:
        return parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _letter_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead letter id (a UUID, as `dlq list` shows)") from None


def _word(text: str) -> str:
    if not _WORD.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: lower-case letters, digits, '_', '.', '-'")
    return text


def _actor(text: str) -> str:
    if not _ACTOR.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits and ._@/:- , at most 128")
    return text


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    candidate = f"ops/{user}"
    return candidate if _ACTOR.match(candidate) else "ops"


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="dead letters: list, show, redrive")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--service", type=_word, help="refused by this service")
    listing.add_argument("--kind", type=_word, help="of this kind (not_json, unknown_version, ...)")
    listing.add_argument("--since", type=_since, help="RFC 3339 or an age: 90s, 15m, 2h, 7d")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100, max 1000)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="one dead letter: original bytes, error, audit records")
    show.add_argument("id", type=_letter_id)
    show.add_argument("--json", action="store_true")
    redrive = actions.add_parser("redrive", help="republish original records to their topics (once each)")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_letter_id, help="one dead letter")
    which.add_argument("--kind", type=_word, help="every dead letter of this kind not redriven yet")
    redrive.add_argument("--service", type=_word, help="with --kind: only those this service refused")
    redrive.add_argument("--actor", type=_actor, default=None, help="who asks (default ops/$USER): the audit actor")
    redrive.add_argument("--wait", type=float, default=30.0,
                         help="seconds to wait for the audit writer to perform it (0: do not wait)")
    _add_outbox_parser(actions)


def _add_outbox_parser(actions: Any) -> None:
    outbox = actions.add_parser("outbox", help="outbox events Kafka refused for good: list, retry, discard")
    steps = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    listing = steps.add_parser("list", help="parked events, oldest first, with how many wait behind each")
    listing.add_argument("--service", type=_word, help="of this service's outbox")
    listing.add_argument("--all", action="store_true", help="discarded ones too")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100, max 1000)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    retry = steps.add_parser("retry", help="put parked events back in their outbox, ahead of their models' others")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=_parked_id, default=[], help="parked event ids")
    which.add_argument("--service", type=_word, help="every parked event of this service")
    which.add_argument("--all", action="store_true", help="every parked event")
    discard = steps.add_parser("discard", help="give up on parked events (kept, marked); their models' later events go")
    discard.add_argument("ids", nargs="+", type=_parked_id)
    discard.add_argument("--actor", type=_actor, default=None, help="who decides (default ops/$USER)")


def _parked_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a parked event id (a number, as `dlq outbox list` shows)")
    return int(text)


async def _outbox(conn: Any, args: argparse.Namespace) -> int:
    from shared import parked_outbox

    if args.outbox_command == "list":
        if not 1 <= args.limit <= parked_outbox.MAX_LIST:
            raise UserError(f"--limit must be 1 to {parked_outbox.MAX_LIST}")
        rows = await parked_outbox.list_parked(conn, service=args.service, include_discarded=args.all,
                                               limit=args.limit)
        if args.json:
            import json
            for row in rows:
                print(json.dumps(row))
            return 0
        if not rows:
            print("(no parked outbox events)")
            return 0
        from services.cli.people import _console, _escape, _table

        table = _table("ID", "PARKED", "SERVICE", "TOPIC", "KEY", "REASON", "WAITING", "STATE", "ERROR")
        for x in rows:
            table.add_row(str(x["id"]), _short_time(x["parked_at"]), x["service"], x["topic"],
                          _escape(x["key"] or "-"), x["reason"], str(x["held_back"]), x["state"],
                          _escape(x["error"][:120]))
        _console().print(table)
        return 0
    if args.outbox_command == "retry":
        if not (args.ids or args.service or args.all):
            raise UserError("name parked event ids, --service S or --all")
        moved = await parked_outbox.retry_parked(conn, args.ids or None, service=args.service)
        missing = sorted(set(args.ids) - set(moved))
        for row_id in moved:
            print(f"{row_id}: back in the outbox; its service's relay sends it next")
        if missing:
            raise UserError(f"not parked (unknown, already retried or discarded): {', '.join(map(str, missing))}")
        if not moved:
            print("(no parked outbox events)")
        return 0
    discarded = await parked_outbox.discard_parked(conn, args.ids, args.actor or _default_actor())
    for row_id in discarded:
        print(f"{row_id}: discarded; its model's later events are sent")
    missing = sorted(set(args.ids) - set(discarded))
    if missing:
        raise UserError(f"not parked (unknown, already retried or discarded): {', '.join(map(str, missing))}")
    return 0


def command(args: argparse.Namespace) -> int:
    if args.dlq_command == "redrive" and args.service is not None and args.kind is None:
        raise UserError("--service narrows --kind: name the kind too, or redrive one ID")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import asyncpg

    from services.cli.people import connect
    from shared.settings import load_settings

    conn = await connect(load_settings().dsn)
    try:
        if args.dlq_command == "list":
            return await _list(conn, args)
        if args.dlq_command == "show":
            return await _show(conn, args)
        if args.dlq_command == "outbox":
            return await _outbox(conn, args)
        return await _redrive(conn, args)
    except asyncpg.UndefinedTableError:
        raise UserError("the database lacks the dead_letters table: run `modelreg migrate`") from None
    except asyncpg.UndefinedColumnError:
        raise UserError("the database lacks migration 0014 (parked outbox state): run `modelreg migrate`") from None
    finally:
        await conn.close()


async def _list(conn: Any, args: argparse.Namespace) -> int:
    from services.cli.people import _console, _escape, _table
    from shared import dead_letters

    if not 1 <= args.limit <= dead_letters.MAX_LIST:
        raise UserError(f"--limit must be 1 to {dead_letters.MAX_LIST}")
    letters = await dead_letters.list_letters(conn, service=args.service, kind=args.kind, since=args.since,
                                              limit=args.limit)
    if args.json:
        import json
        for letter in letters:
            print(json.dumps(letter))
        return 0
    if not letters:
        print("(no dead letters)")
        return 0
    table = _table("ID", "WHEN", "SERVICE", "KIND", "TOPIC", "KEY", "REDRIVEN", "MESSAGE")
    for x in letters:
        redriven = x["redrive"]["redriven_at"] or ("requested" if x["redrive"]["requested_at"] else "-")
        table.add_row(x["id"], _short_time(x["dead_lettered_at"]), x["service"], x["kind"],
                      f"{x['original_topic']}[{x['partition']}]@{x['offset']}", _escape(x["key"] or "-"),
                      _short_time(redriven) if redriven not in ("-", "requested") else redriven,
                      _escape(x["message"][:120]))
    _console().print(table)
    return 0


def _short_time(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _show(conn: Any, args: argparse.Namespace) -> int:
    from shared import dead_letters

    letter = await dead_letters.show(conn, args.id)
    if letter is None:
        raise UserError(f"no dead letter {args.id}")
    if args.json:
        import json
        print(json.dumps(letter, indent=2, ensure_ascii=False))
        return 0
    redrive = letter["redrive"]
    print(f"dead letter {letter['id']}")
    print(f"  refused by    {letter['service']} at {_short_time(letter['dead_lettered_at'])}")
    print(f"  error         {letter['kind']}: {letter['message']}")
    print(f"  record        {letter['original_topic']}[{letter['partition']}]@{letter['offset']} "
          f"key={letter['key']!r} ({letter['size_bytes']} bytes)")
    if letter["original_event_id"]:
        print(f"  event id      {letter['original_event_id']}")
    if redrive["redriven_at"]:
        print(f"  redriven      {_short_time(redrive['redriven_at'])} by {redrive['redriven_by']}")
    elif redrive["requested_at"]:
        print(f"  redrive       requested {_short_time(redrive['requested_at'])} by {redrive['requested_by']}, "
              "waiting for the audit writer")
    print("  audit:")
    for record in letter["audit"]:
        print(f"    #{record['seq']} {record['action']} by {record['actor']} at "
              f"{_short_time(record['occurred_at'])}: {record['reason'] or ''}")
    if not letter["audit"]:
        print("    (none recorded yet)")
    if letter["payload_text"] is not None:
        print("original bytes (UTF-8):")
        print(letter["payload_text"])
    else:
        print("original bytes (base64, not text):")
        print(letter["payload_b64"])
    return 0


async def _redrive(conn: Any, args: argparse.Namespace) -> int:
    from shared import dead_letters

    actor = args.actor or _default_actor()
    if args.id is not None:
        asked = await dead_letters.request_redrive(conn, args.id, actor)
        if asked is None:
            raise UserError(f"no dead letter {args.id}")
    else:
        asked = await dead_letters.request_redrive_matching(conn, kind=args.kind, service=args.service, actor=actor)
    for before in asked.already:
        state = before["redrive"]
        when = state["redriven_at"] or state["requested_at"]
        verb = "redriven" if state["redriven_at"] else "asked for"
        print(f"{before['id']}: already {verb} at {_short_time(when)} by {state['requested_by']}; nothing changed")
    if not asked.requested:
        if args.id is None:
            print(f"no dead letters of kind {args.kind}{' from ' + args.service if args.service else ''} "
                  "waiting for a redrive")
        return 0
    if args.wait <= 0:
        print(f"asked for {len(asked.requested)} redrive(s); the audit writer performs them")
        return 0
    done = await _wait_redriven(conn, asked.requested, args.wait)
    for letter in done:
        print(f"{letter['id']}: redriven to {letter['original_topic']} "
              f"at {_short_time(letter['redrive']['redriven_at'])} "
              f"by {letter['redrive']['redriven_by']}")
    waiting = len(asked.requested) - len(done)
    if waiting:
        print(f"modelreg: error: {waiting} redrive(s) asked for but not performed within {args.wait:g}s: "
              "is the audit writer running? It performs them when it runs.", file=sys.stderr)
        return 1
    return 0


async def _wait_redriven(conn: Any, ids: list[uuid.UUID], seconds: float) -> list[dict[str, Any]]:
    from shared import dead_letters

    deadline = time.monotonic() + seconds
    while True:
        letters = await dead_letters.redrive_state(conn, ids)
        done = [x for x in letters if x["redrive"]["redriven_at"]]
        if len(done) == len(ids) or time.monotonic() >= deadline:
            return done
        await asyncio.sleep(0.2)
