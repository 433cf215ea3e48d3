"""`modelreg webhooks create | list | delete | test | deliveries | redeliver | enable | disable`.

    modelreg webhooks create --url URL [--name N] [--event TOPIC]... [--models GLOB]... [--stage S]...
                             [--secret whsec_...] [--description TEXT] [--json]
    modelreg webhooks list [--json]
    modelreg webhooks delete ID
    modelreg webhooks test ID [--wait SECONDS]             # the webhooks service sends it
    modelreg webhooks deliveries [ID] [--status S] [--since T] [--limit N] [--attempts] [--json]
    modelreg webhooks redeliver DELIVERY_ID | --endpoint ID --since T
    modelreg webhooks enable ID | disable ID

Endpoints, deliveries and attempts live in PostgreSQL; the webhooks service sends (tests and
replays too). `--since` takes RFC 3339 or an age (90s, 15m, 2h, 7d). The secret is printed
once, at creation. Exit codes: 0 done, 1 not found or failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from services.cli.errors import UserError

_STATUSES = ("pending", "delivered", "failed")


def _endpoint_id(text: str) -> Any:
    from shared.webhooks.logic import WebhookInputError
    from shared.webhooks.manage import parse_id

    try:
        return parse_id(text)
    except WebhookInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _delivery_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a delivery id (a number, as `webhooks deliveries` shows)")
    return int(text)


def _since(text: str) -> Any:
    from services.cli.dlq import _since as since

    return since(text)


def add_parser(commands: Any) -> None:
    webhooks = commands.add_parser("webhooks", help="HTTP endpoints that receive registry events, signed")
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new endpoint (prints its secret, once)")
    create.add_argument("--url", required=True, help="http(s) URL the events are POSTed to")
    create.add_argument("--name", help="a label (default: the URL)")
    create.add_argument("--event", dest="events", action="append", default=[], metavar="TOPIC",
                        help="an event type to send (repeatable; default: every type)")
    create.add_argument("--models", action="append", default=[], metavar="GLOB",
                        help="model-name glob (repeatable; default: every model)")
    create.add_argument("--stage", dest="stages", action="append", default=[],
                        choices=("none", "staging", "production", "archived"),
                        help="only events about this stage (repeatable; default: any)")
    create.add_argument("--secret", help="whsec_... (default: a new random one)")
    create.add_argument("--description")
    create.add_argument("--json", action="store_true")
    listing = actions.add_parser("list", help="every endpoint")
    listing.add_argument("--json", action="store_true")
    delete = actions.add_parser("delete", help="remove an endpoint and its delivery log")
    delete.add_argument("id", type=_endpoint_id)
    for name, text in (("enable", "send to it again (clears its failure clock)"),
                       ("disable", "stop sending to it")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", type=_endpoint_id)
    test = actions.add_parser("test", help="send a test message now, and show the answer")
    test.add_argument("id", type=_endpoint_id)
    test.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the webhooks service (default 30)")
    deliveries = actions.add_parser("deliveries", help="the delivery log, newest first")
    deliveries.add_argument("id", nargs="?", type=_endpoint_id, help="of this endpoint only")
    deliveries.add_argument("--status", choices=_STATUSES)
    deliveries.add_argument("--since", type=_since, help="RFC 3339 or an age: 90s, 15m, 2h, 7d")
    deliveries.add_argument("--limit", type=int, default=50, help="at most this many (default 50, max 1000)")
    deliveries.add_argument("--attempts", action="store_true", help="every attempt of each delivery")
    deliveries.add_argument("--json", action="store_true", help="one JSON object per line (with attempts)")
    redeliver = actions.add_parser("redeliver", help="send again: one delivery, or an endpoint's since a time")
    redeliver.add_argument("delivery", nargs="?", type=_delivery_id, help="a delivery id")
    redeliver.add_argument("--endpoint", type=_endpoint_id, help="with --since: every event since then")
    redeliver.add_argument("--since", type=_since, help="RFC 3339 or an age: 90s, 15m, 2h, 7d")


def command(args: argparse.Namespace) -> int:
    if args.webhooks_command == "redeliver":
        if (args.delivery is None) == (args.endpoint is None):
            raise UserError("name one delivery id, or --endpoint ID --since T")
        if args.endpoint is not None and args.since is None:
            raise UserError("--endpoint needs --since (RFC 3339 or an age such as 2h)")
        if args.delivery is not None and args.since is not None:
            raise UserError("--since goes with --endpoint, not with a delivery id")
    if args.webhooks_command == "deliveries" and not 1 <= args.limit <= 1000:
        raise UserError("--limit must be 1 to 1000")
    if args.webhooks_command == "test" and not 0 < args.wait <= 600:
        raise UserError("--wait must be more than 0 and at most 600 seconds")
    return asyncio.run(_run(args))


def _actor() -> str:
    from services.cli.dlq import _default_actor

    return _default_actor()


async def _run(args: argparse.Namespace) -> int:
    import asyncpg

    from services.cli.people import connect
    from shared.settings import load_settings
    from shared.webhooks.logic import WebhookInputError

    settings = load_settings()
    conn = await connect(settings.dsn)
    try:
        handler = {"create": _create, "list": _list, "delete": _delete, "enable": _enable, "disable": _enable,
                   "test": _test, "deliveries": _deliveries, "redeliver": _redeliver}[args.webhooks_command]
        return await handler(conn, args, settings)
    except WebhookInputError as exc:
        raise UserError(str(exc)) from None
    except asyncpg.UndefinedTableError:
        raise UserError("the database lacks the webhook tables (migration 0012): run `modelreg migrate`") from None
    finally:
        await conn.close()


async def _create(conn: Any, args: argparse.Namespace, settings: Any) -> int:
    from shared.webhooks import manage

    endpoint = await manage.create(conn, settings, url=args.url, name=args.name, description=args.description,
                                   topics=args.events, models=args.models, stages=args.stages, secret=args.secret,
                                   created_by=_actor())
    if args.json:
        print(json.dumps(endpoint.public(with_secret=True)))
        return 0
    print(f"created webhook {endpoint.id} -> {endpoint.url}")
    print(f"  events {', '.join(endpoint.subscription.topics)}; models {', '.join(endpoint.subscription.models)}"
          f"; stages {', '.join(endpoint.subscription.stages) or 'any'}")
    print(f"  secret {endpoint.secret}")
    print("  (shown once: receivers verify `webhook-signature` with it, e.g. with the standardwebhooks package)")
    return 0


async def _list(conn: Any, args: argparse.Namespace, settings: Any) -> int:
    from services.cli.people import _console, _escape, _table
    from shared.webhooks import store

    endpoints = await store.list_endpoints(conn)
    if args.json:
        for endpoint in endpoints:
            print(json.dumps(endpoint.public()))
        return 0
    if not endpoints:
        print("(no webhooks: `modelreg webhooks create --url URL`)")
        return 0
    table = _table("ID", "STATUS", "URL", "EVENTS", "MODELS", "STAGES", "FORMAT", "FAILING SINCE")
    for e in endpoints:
        status = e.status if e.status == "active" else f"disabled: {e.disabled_reason or ''}"
        table.add_row(str(e.id), _escape(status[:80]), _escape(e.url), ", ".join(e.subscription.topics),
                      _escape(", ".join(e.subscription.models)), ", ".join(e.subscription.stages) or "any", e.format,
                      f"{e.failing_since:%Y-%m-%d %H:%M:%S}" if e.failing_since else "-")
    _console().print(table)
    return 0


async def _delete(conn: Any, args: argparse.Namespace, settings: Any) -> int:
    from shared.webhooks import store

    if not await store.delete_endpoint(conn, args.id, deleted_by=_actor()):
        raise UserError(f"no webhook {args.id}")
    print(f"deleted webhook {args.id} and its delivery log")
    return 0


async def _enable(conn: Any, args: argparse.Namespace, settings: Any) -> int:
    from shared.webhooks import store

    status = "active" if args.webhooks_command == "enable" else "disabled"
    endpoint = await store.update_endpoint(conn, args.id, status=status)
    if endpoint is None:
        raise UserError(f"no webhook {args.id}")
    print(f"webhook {args.id} is {'enabled' if status == 'active' else 'disabled'}")
    if status == "active":
        print("  what failed while it was disabled: `modelreg webhooks redeliver --endpoint ID --since T`")
    return 0


async def _test(conn: Any, args: argparse.Namespace, settings: Any) -> int:
    from shared.webhooks import manage, store

    endpoint = await store.get_endpoint(conn, args.id)
    if endpoint is None:
        raise UserError(f"no webhook {args.id}")
    delivery_id, done = await manage.send_test(conn, endpoint, requested_by=_actor(), wait_seconds=args.wait)
    if done is None:
        raise UserError(f"test delivery {delivery_id} was not tried within {args.wait:g}s: is the webhooks service "
                        "running (`modelreg up`, or `modelreg run webhooks`)?")
    attempt = done["attempt_log"][-1]
    answer = f"HTTP {attempt['status_code']}" if attempt["status_code"] is not None else "no answer"
    if done["status"] == "delivered":
        print(f"delivered test {delivery_id}: {answer} in {attempt['latency_ms']:.0f} ms")
        return 0
    print(f"test {delivery_id} failed: {answer} in {attempt['latency_ms']:.0f} ms: {attempt['error']}", file=sys.stderr)
    return 1


async def _deliveries(conn: Any, args: argparse.Namespace, settings: Any) -> int:
    from services.cli.people import _console, _escape, _table
    from shared.webhooks import store

    rows = await store.list_deliveries(conn, endpoint_id=args.id, status=args.status, since=args.since,
                                       limit=args.limit, with_attempts=args.attempts or args.json)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("(no deliveries)")
        return 0
    table = _table("ID", "CREATED", "ENDPOINT", "EVENT", "MODEL", "KIND", "STATUS", "TRIES", "LAST")
    for d in rows:
        last = f"HTTP {d['last_status']}" if d["last_status"] is not None else "-"
        if d["last_error"] and d["status"] != "delivered":
            last = f"{last}: {d['last_error']}" if d["last_status"] is None else last
        table.add_row(str(d["id"]), d["created_at"][:19].replace("T", " "), d["endpoint_id"][:8], d["topic"],
                      _escape(d["model"] or "-"), d["kind"], d["status"], str(d["attempts"]), _escape(last[:100]))
        for a in d.get("attempt_log") or []:
            answer = f"HTTP {a['status_code']}" if a["status_code"] is not None else "no answer"
            retry = f", again at {a['retry_at'][11:19]}" if a["retry_at"] else ""
            table.add_row("", f"  #{a['attempt']} {a['attempted_at'][11:23]}", "", "", "", "",
                          answer, f"{a['latency_ms']:.0f} ms", _escape(f"{a['error'] or ''}{retry}"[:100]))
    _console().print(table)
    return 0


async def _redeliver(conn: Any, args: argparse.Namespace, settings: Any) -> int:
    from shared.webhooks import store

    if args.delivery is not None:
        if await store.get_delivery(conn, args.delivery) is None:
            raise UserError(f"no delivery {args.delivery}")
        ids = await store.redeliver(conn, requested_by=_actor(), delivery_id=args.delivery)
        if not ids:
            raise UserError(f"delivery {args.delivery} is a test: run `webhooks test` again")
    else:
        endpoint = await store.get_endpoint(conn, args.endpoint)
        if endpoint is None:
            raise UserError(f"no webhook {args.endpoint}")
        ids = await store.redeliver(conn, requested_by=_actor(), endpoint_id=args.endpoint, since=args.since)
        if not ids:
            print(f"(no deliveries to webhook {args.endpoint} since {args.since.isoformat()})")
            return 0
        if endpoint.status != "active":
            print(f"note: webhook {args.endpoint} is disabled; `modelreg webhooks enable {args.endpoint}` sends them")
    print(f"queued {len(ids)} redelivery(ies): {', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}")
    return 0
