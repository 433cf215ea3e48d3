"""`modelreg token create | list | revoke`: the HTTP API's bearer tokens.

    modelreg token create --role publisher --name ci-pipeline   # prints the token, once
    modelreg token create --role evaluator --name qa --models "fraud-*" --expires 30d
    modelreg token list [--all] [--json]
    modelreg token revoke ID|NAME                                # a name revokes all its tokens

Only the token's SHA-256 is stored; a lost token cannot be shown again: revoke it, create another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from services.cli.errors import UserError


def add_parser(commands: Any) -> None:
    token = commands.add_parser("token", help="bearer tokens for the HTTP API: create, list, revoke")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token and print it (shown once)")
    create.add_argument("--role", required=True, choices=("reader", "publisher", "evaluator", "approver", "admin"),
                        help="reader: reads; publisher: registers versions; evaluator: reports QA results; "
                             "approver: requests promotions; admin: all of it")
    create.add_argument("--name", required=True, type=_name,
                        help="who holds it: becomes the actor of what the token does")
    create.add_argument("--models", action="append", type=_globs, metavar="GLOBS",
                        help="only models matching these name globs, comma-separated or repeated "
                             "(default: every model)")
    create.add_argument("--expires", type=_lifetime, default=None, metavar="DURATION",
                        help="lifetime such as 90d, 12h, 2w (default 90d)")
    listing = actions.add_parser("list", help="tokens, their roles, model scopes and expiry (never the tokens)")
    listing.add_argument("--all", action="store_true", help="also revoked tokens")
    listing.add_argument("--json", action="store_true", help="one JSON object per token")
    revoke = actions.add_parser("revoke", help="revoke a token by id, or every token of a name")
    revoke.add_argument("token", metavar="ID|NAME")


def _name(text: str) -> str:
    from services.api.auth import valid_name

    if not valid_name(text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_', '@' and '-', at most 64, "
                                         "starting with a letter or digit")
    return text


def _globs(text: str) -> list[str]:
    from services.api.auth import valid_glob

    globs = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in globs if not valid_glob(g)]
    if not globs or bad:
        raise argparse.ArgumentTypeError(f"{(bad or [text])[0][:80]!r}: model-name globs such as 'fraud-*' "
                                         "(lower-case letters, digits, '.', '_', '-', * ? [ ] !)")
    return globs


def _lifetime(text: str) -> Any:
    from shared.policy import parse_duration

    try:
        lifetime = parse_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not lifetime:
        raise argparse.ArgumentTypeError("a token's lifetime must be longer than 0")
    return lifetime


def command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import asyncpg

    from services.api import auth
    from services.cli.people import connect
    from shared.db import migrate
    from shared.settings import load_settings

    settings = load_settings()
    try:
        await migrate(settings.dsn)  # the token table is the API's; a fresh database may lack it
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UserError(f"cannot prepare the database: {exc}") from None
    conn = await connect(settings.dsn)
    try:
        if args.token_command == "create":
            models = [g for globs in args.models or [["*"]] for g in globs]
            token, info = await auth.create(conn, name=args.name, role=args.role, models=models,
                                            expires_in=args.expires or auth.DEFAULT_EXPIRY)
            print(token)
            print(f"token {info.id} for {info.name!r} with role {info.role}, models {', '.join(info.models)}, "
                  f"expires {_when(info.expires_at)} UTC: shown once, store it now "
                  "(send it as `Authorization: Bearer <token>`)", file=sys.stderr)
            return 0
        if args.token_command == "list":
            tokens = await auth.list_tokens(conn, include_revoked=args.all)
            if args.json:
                for info in tokens:
                    print(json.dumps(info.as_dict(), default=str))
                return 0
            _table(tokens)
            return 0
        revoked = await auth.revoke(conn, args.token)
        if not revoked:
            raise UserError(f"no active token with id or name {args.token!r}")
        for info in revoked:
            print(f"revoked token {info.id} ({info.name}, {info.role})")
        return 0
    finally:
        await conn.close()


def _table(tokens: list[Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "ROLE", "MODELS", "CREATED", "EXPIRES", "LAST USED", "REVOKED"):
        table.add_column(column)
    now = datetime.now(UTC)
    for info in tokens:
        expires = _when(info.expires_at) + (" (expired)" if info.expires_at <= now else "")
        table.add_row(str(info.id), info.name, info.role, escape(",".join(info.models)), _when(info.created_at),
                      expires, _when(info.last_used_at), _when(info.revoked_at))
    if not tokens:
        print("(no tokens: create one with `modelreg token create --role reader --name NAME`)")
        return
    Console(width=None if sys.stdout.isatty() else 400).print(table)


def _when(value: Any) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
