"""The registry for people at a terminal: the API's read documents as tables.

    modelreg models [--prefix P] [--tag K=V] [--stage S] [--limit N] [--json]
    modelreg versions NAME [--json]
    modelreg show NAME VERSION [--json]
    modelreg explain NAME VERSION [--json]
    modelreg policy dry-run FILE [--all] [--model NAME] [--json]

They read PostgreSQL directly with the API's queries (services/api/queries.py). Exit codes:
0 done, 1 not found or failed (one line says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from services.cli.errors import UserError
from shared.events import MODEL_NAME_PATTERN, STAGES

CONNECT_TIMEOUT = 5.0


def _model_name(text: str) -> str:
    if not re.match(MODEL_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a model name (lower-case letters, digits, '.', '_', '-')")
    return text


def _version(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (a whole number from 1)")
    return int(text)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 10000")
    return int(text)


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def add_parsers(commands: Any) -> None:
    models = commands.add_parser("models", help="models, their champions and stages")
    models.add_argument("--prefix", help="names starting with this")
    models.add_argument("--tag", type=_tag, metavar="K=V", help="some version carries this tag")
    models.add_argument("--stage", choices=STAGES, help="some version is in this stage")
    models.add_argument("--limit", type=_limit, default=200, help="at most this many (default 200)")
    models.add_argument("--json", action="store_true", help="JSON for scripts")

    versions = commands.add_parser("versions", help="a model's versions with stage, status and key metrics")
    versions.add_argument("name", type=_model_name)
    versions.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="one version: artifact, checks, evaluations, stage history")
    show.add_argument("name", type=_model_name)
    show.add_argument("version", type=_version)
    show.add_argument("--json", action="store_true")

    explain = commands.add_parser("explain", help="each promotion gate: does it hold for this version, and why")
    explain.add_argument("name", type=_model_name)
    explain.add_argument("version", type=_version)
    explain.add_argument("--json", action="store_true")

    policy = commands.add_parser("policy", help="promotion policy tools")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    dry = actions.add_parser("dry-run", help="what a new policy file would promote, roll back or archive now, "
                                             "compared with the one the services run with (MODELREG_POLICY_FILE, "
                                             "else infra/policy.yaml in a source checkout, as `modelreg up`); "
                                             "nothing is changed")
    dry.add_argument("file", help="the new policy (YAML)")
    dry.add_argument("--model", action="append", type=_model_name, default=None, help="only these models")
    dry.add_argument("--all", action="store_true",
                     help="also the versions either policy treats alike, after the changes")
    dry.add_argument("--json", action="store_true")


COMMANDS = ("models", "versions", "show", "explain", "policy")


def command(args: argparse.Namespace) -> int:
    return asyncio.run(run(args))


async def connect(dsn: str) -> Any:
    import asyncpg

    from services.cli.audit import _describe
    from shared.db import _init_connection

    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, command_timeout=60)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot connect to PostgreSQL at {_describe(dsn)}: {why}") from None
    await _init_connection(conn)
    return conn


async def run(args: argparse.Namespace) -> int:
    import asyncpg

    from services.api.documents import NotFound
    from shared.policy import load_policy
    from shared.settings import load_settings

    settings = load_settings()
    new_policy = load_policy(args.file) if args.command == "policy" else None  # a bad file: exit 2
    policy = load_policy(settings.policy_file)
    conn = await connect(settings.dsn)
    try:
        if args.command == "models":
            return await _models(conn, args)
        if args.command == "versions":
            return await _versions(conn, policy, args)
        if args.command == "show":
            return await _show(conn, args)
        if args.command == "explain":
            return await _explain(conn, policy, args)
        return await _dry_run(conn, policy, new_policy, args)
    except NotFound as exc:
        raise UserError(exc.detail) from None
    except asyncpg.UndefinedTableError:
        raise UserError("the database lacks the registry view: run `modelreg migrate`") from None
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- output


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_plain(value), indent=2, ensure_ascii=False))


def _console() -> Any:
    from rich.console import Console

    # Piped output is not wrapped to 80 columns: lines stay whole for grep and friends.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 400)


def _table(*columns: str) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


_STAGE_STYLE = {"production": "bold green", "staging": "yellow", "none": "dim", "archived": "bright_black"}


def _stage(stage: str) -> str:
    return f"[{_STAGE_STYLE.get(stage, '')}]{stage}[/]"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _metrics(values: dict[str, Any] | None) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (values or {}).items()) or "-"


def _escape(text: Any) -> str:
    from rich.markup import escape

    return escape("" if text is None else str(text))


# ---------------------------------------------------------------------------- commands


async def _models(conn: Any, args: argparse.Namespace) -> int:
    from services.api import queries

    rows = await queries.list_models(conn, prefix=args.prefix, tag=args.tag, stage=args.stage, limit=args.limit)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("(no models)")
        return 0
    table = _table("MODEL", "CHAMPION", "LATEST", "VERSIONS", "STAGES", "UPDATED (UTC)")
    for row in rows:
        stages = "  ".join(f"{_stage(s)} {row['stages'][s]}" for s in STAGES if row["stages"].get(s))
        table.add_row(_escape(row["name"]), f"v{row['champion']}" if row["champion"] is not None else "-",
                      f"v{row['latest_version']}", str(row["version_count"]), stages, _when(row["updated_at"]))
    _console().print(table)
    return 0


async def _versions(conn: Any, policy: Any, args: argparse.Namespace) -> int:
    from services.api import documents

    doc = await documents.model_document(conn, policy, args.name)
    if args.json:
        _print_json(doc)
        return 0
    console = _console()
    champion = f"v{doc['champion']} in production" if doc["champion"] is not None else "no champion"
    console.print(f"[bold]{_escape(doc['name'])}[/]  {champion}  (rule {_escape(doc['rule']['match'])}, "
                  f"policy {doc['policy_revision']})")
    table = _table("VERSION", "STAGE", "STATUS", "KEY METRICS", "REGISTERED BY", "CREATED (UTC)")
    for v in doc["versions"]:
        mark = " *" if v["is_champion"] else ""
        table.add_row(f"v{v['version']}{mark}", _stage(v["stage"]), v["status"], _escape(_metrics(v["key_metrics"])),
                      _escape(v["registered_by"] or "-"), _when(v["created_at"]))
    console.print(table)
    return 0


async def _show(conn: Any, args: argparse.Namespace) -> int:
    from services.api import documents

    doc = await documents.version_document(conn, args.name, args.version)
    if args.json:
        _print_json(doc)
        return 0
    console = _console()
    champion = "  [bold yellow]champion[/]" if doc["is_champion"] else ""
    console.print(f"[bold]{_escape(doc['name'])} v{doc['version']}[/]  {_stage(doc['stage'])}  "
                  f"{doc['status']}{champion}")
    artifact = doc["artifact"]
    facts = _table("", "")
    for key, value in (("artifact", artifact["uri"]), ("archive", artifact["archive_uri"]),
                       ("sha256", artifact["sha256"]), ("size", artifact["size_bytes"]),
                       ("format", artifact["format"]), ("registered by", doc["registered_by"]),
                       ("created", _when(doc["created_at"])), ("metrics", _metrics(doc["metrics"])),
                       ("tags", _metrics(doc["tags"])), ("run", doc["run_id"]), ("description", doc["description"])):
        if value is not None:
            facts.add_row(f"[dim]{key}[/]", _escape(value))
    console.print(facts)
    if doc["checks"]:
        console.print("\n[bold]checks[/]")
        for check in doc["checks"]:
            mark = "[green]pass[/]" if check.get("passed") else "[red]FAIL[/]"
            console.print(f"  {mark} {_escape(check.get('name'))} {_escape(check.get('detail') or '')}")
    for reason in doc["reasons"]:
        console.print(f"  [red]rejected[/] {_escape(reason.get('code'))}: {_escape(reason.get('message'))}")
    if doc["evaluations"]:
        console.print("\n[bold]evaluations[/]")
        table = _table("SEQ", "SUITE", "ENV", "METRICS", "PASSED", "EVALUATOR", "AT (UTC)")
        for e in doc["evaluations"]:
            table.add_row(str(e["seq"]), _escape(e["suite"]), _escape(e["environment"]),
                          _escape(_metrics(e["metrics"])),
                          {True: "yes", False: "no", None: "-"}[e["passed"]], _escape(e["evaluator"] or "-"),
                          _when(e["at"]))
        console.print(table)
    if doc["stage_history"]:
        console.print("\n[bold]stage history[/]")
        table = _table("SEQ", "FROM", "TO", "REASON", "ACTOR", "AT (UTC)")
        for c in doc["stage_history"]:
            table.add_row(str(c["seq"]), _escape(c["from_stage"] or "-"), _stage(c["to_stage"]),
                          _escape(c["reason"] or "-"), _escape(c["actor"]), _when(c["at"]))
        console.print(table)
    return 0


async def _explain(conn: Any, policy: Any, args: argparse.Namespace) -> int:
    from services.api import documents

    doc = await documents.explanation(conn, policy, args.name, args.version)
    if args.json:
        _print_json(doc)
        return 0
    console = _console()
    console.print(f"[bold]{_escape(doc['name'])} v{doc['version']}[/]  {_stage(doc['stage'])}  "
                  f"{_escape(doc['summary'])}  (rule {_escape(doc['rule']['match'])}, policy {doc['policy_revision']})")
    if not doc["gates"]:
        console.print("the policy sets no gates")
        return 0
    table = _table("", "GATE", "WHY")
    for gate in doc["gates"]:
        mark = "[green]✓[/]" if gate["passed"] else "[red]✗[/]"
        table.add_row(mark, _escape(gate["gate"]), _escape(gate["detail"]))
    console.print(table)
    return 0


async def _services_revision(conn: Any) -> dict[str, Any] | None:
    """The policy revision the running services last decided under, from the audit log
    (validation and promotion record it with every decision); None before any decision."""
    row = await conn.fetchrow(
        """SELECT evidence->>'policy_revision' AS revision, source, occurred_at FROM audit_log
           WHERE evidence ? 'policy_revision' ORDER BY seq DESC LIMIT 1""")
    return None if row is None else {"revision": row["revision"], "source": row["source"],
                                      "at": row["occurred_at"].isoformat()}


async def _dry_run(conn: Any, current: Any, new: Any, args: argparse.Namespace) -> int:
    from services.api import dryrun, queries

    view = await queries.whole_view(conn, args.model)
    differences = dryrun.compare(view, current, new, datetime.now(UTC), everything=args.all)
    services = await _services_revision(conn)
    if args.json:
        _print_json({"current_revision": current.revision, "current_policy": current.source,
                     "new_revision": new.revision, "new_policy": new.source,
                     "services_revision": services["revision"] if services else None,
                     "differences": [d.as_dict() for d in differences]})
        return 0
    console = _console()
    console.print(f"current policy {current.revision} ({_escape(current.source)}) -> new policy {new.revision} "
                  f"({_escape(new.source)}); nothing is changed")
    if services is not None and services["revision"] != current.revision:
        console.print(f"[yellow]note: the running services last decided under policy {services['revision']} "
                      f"({_escape(services['source'])}, {services['at']}), not the current one read here: set "
                      "MODELREG_POLICY_FILE to the file they run with[/]")
    changed = [d for d in differences if d.changed]
    unchanged = [d for d in differences if not d.changed]
    if changed:
        table = _table("MODEL", "VERSION", "STAGE", "CURRENT", "NEW", "WHY (NEW)")
        for d in changed:
            style = "bold" if d.new.changes_state else ""
            table.add_row(_escape(d.name), f"v{d.version}", _stage(d.stage), d.current.action,
                          f"[{style}]{d.new.action}[/]" if style else d.new.action, _escape(d.new.detail))
        console.print(table)
    else:
        console.print("no version would be treated differently now")
    if unchanged:  # only with --all
        console.print(f"unchanged under the new policy ({len(unchanged)}):")
        table = _table("MODEL", "VERSION", "STAGE", "EITHER POLICY", "WHY")
        for d in unchanged:
            table.add_row(_escape(d.name), f"v{d.version}", _stage(d.stage), d.new.action, _escape(d.new.detail))
        console.print(table)
    if changed:
        acting = [d for d in changed if d.new.changes_state and d.new.action != d.current.action]
        console.print(f"{len(acting)} version(s) would be promoted, rolled back or archived under the new policy "
                      f"and not under the current one")
    return 0

