"""Bearer tokens, roles, model scopes and expiry.

A token is 32 random bytes (urlsafe, prefixed `mr_`); only its SHA-256 is stored, so the table
never holds a usable secret and a lookup by hash is as good as a constant-time comparison. The
token's name is its identity: it becomes the `actor` of the events it causes. Tokens are never
logged; `describe` shows the first characters at most.

Roles separate duties rather than stack: a publisher registers, an evaluator reports QA
results, an approver asks for promotions, and only an admin may do all of it. Each token is
also limited to model-name globs (`fraud-*`) and expires (90 days unless told otherwise).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Literal, cast

import asyncpg

Role = Literal["reader", "publisher", "evaluator", "approver", "admin"]
ROLES: tuple[Role, ...] = ("reader", "publisher", "evaluator", "approver", "admin")
Action = Literal["read", "register", "evaluate", "approve", "administer"]
TOKEN_PREFIX = "mr_"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_TOKEN_NAME = re.compile(TOKEN_NAME_PATTERN)
_TOKEN = re.compile(r"^mr_[A-Za-z0-9_-]{43}$")

# What each kind of request needs.
READ: Action = "read"
PUBLISH: Action = "register"      # register versions
EVALUATE: Action = "evaluate"     # report QA and monitoring results (metrics.evaluated)
APPROVE: Action = "approve"       # request promotions
ADMIN: Action = "administer"      # operate the registry itself

# Separation of duties: whoever registers a version does not also vouch for its quality or
# approve it; an admin can, and the promotion policy still ignores an author's own results.
GRANTS: dict[str, frozenset[Action]] = {
    "reader": frozenset({READ}),
    "publisher": frozenset({READ, PUBLISH}),
    "evaluator": frozenset({READ, EVALUATE}),
    "approver": frozenset({READ, APPROVE}),
    "admin": frozenset({READ, PUBLISH, EVALUATE, APPROVE, ADMIN}),
}
# The role to name when a request is refused: the one made for it.
ROLE_FOR: dict[Action, Role] = {READ: "reader", PUBLISH: "publisher", EVALUATE: "evaluator",
                                APPROVE: "approver", ADMIN: "admin"}

DEFAULT_EXPIRY = timedelta(days=90)
MAX_SCOPES = 32
MODEL_GLOB_PATTERN = r"^[a-z0-9._*?\[\]!-]{1,128}$"
_MODEL_GLOB = re.compile(MODEL_GLOB_PATTERN)


def allows(role: str | None, needed: Action) -> bool:
    """Whether a token of `role` may do what needs `needed` (None: no token)."""
    return role in GRANTS and needed in GRANTS[role]


def valid_glob(glob: str) -> bool:
    """A model-name glob: the characters of model names plus * ? [ ] !."""
    return bool(_MODEL_GLOB.match(glob))


def in_scope(models: Iterable[str], name: str) -> bool:
    return any(fnmatchcase(name, glob) for glob in models)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    return bool(_TOKEN.match(token))


def valid_name(name: str) -> bool:
    return bool(_TOKEN_NAME.match(name))


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; '' when the header is malformed."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's id, name (the actor), role, the models it may touch and
    when it stops working."""

    token_id: int
    name: str
    role: Role
    models: tuple[str, ...] = ("*",)
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def may_touch(self, model: str) -> bool:
        return in_scope(self.models, model)


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: str
    models: list[str]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "models": list(self.models),
                "created_at": self.created_at, "expires_at": self.expires_at,
                "last_used_at": self.last_used_at, "revoked_at": self.revoked_at}


_INFO = "id, name, role, models, created_at, expires_at, last_used_at, revoked_at"


# ---------------------------------------------------------------------------- storage

async def identify(db: asyncpg.Pool | asyncpg.Connection, token: str) -> Identity | None:
    """The live token's identity: None when it is unknown, revoked or expired."""
    identity = await lookup(db, token)
    return None if identity is None or identity.expired(datetime.now(UTC)) else identity


async def lookup(db: asyncpg.Pool | asyncpg.Connection, token: str) -> Identity | None:
    """The unrevoked token's identity, expired or not (so a refusal can say which), or None;
    records the use of a live token at most once a minute (one round trip)."""
    if not looks_like_token(token):
        return None
    row = await db.fetchrow(
        """WITH found AS (SELECT id, name, role, models, expires_at, last_used_at FROM api_tokens
                          WHERE token_sha256 = $1 AND revoked_at IS NULL),
                used AS (UPDATE api_tokens SET last_used_at = now() FROM found
                         WHERE api_tokens.id = found.id AND found.expires_at > now()
                           AND (found.last_used_at IS NULL OR found.last_used_at < now() - interval '1 minute'))
           SELECT id, name, role, models, expires_at FROM found""", hash_token(token))
    return None if row is None else Identity(row["id"], row["name"], row["role"], tuple(row["models"]),
                                             row["expires_at"])


def check_scope(models: Iterable[str]) -> list[str]:
    """The globs, checked: at least one, at most MAX_SCOPES, each a model-name glob."""
    globs = list(dict.fromkeys(models))
    if not 1 <= len(globs) <= MAX_SCOPES:
        raise ValueError(f"a token needs 1 to {MAX_SCOPES} model globs, got {len(globs)}")
    for glob in globs:
        if not valid_glob(glob):
            raise ValueError(f"model glob {glob[:80]!r}: lower-case letters, digits, '.', '_', '-' and the "
                             "wildcards * ? [ ] !, at most 128")
    return globs


async def create(db: asyncpg.Pool | asyncpg.Connection, *, name: str, role: Role, models: Iterable[str] = ("*",),
                 expires_in: timedelta = DEFAULT_EXPIRY) -> tuple[str, TokenInfo]:
    """A new token: returns the token itself (shown once, never stored) and its record."""
    if not valid_name(name):
        raise ValueError(f"token name {name!r}: letters, digits, '.', '_', '@' and '-', at most 64, "
                         "starting with a letter or digit")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    globs = check_scope(models)
    if expires_in <= timedelta(0):
        raise ValueError("a token's lifetime must be longer than 0")
    token = new_token()
    # INSERT ... RETURNING always answers its row
    row = cast(asyncpg.Record, await db.fetchrow(
        f"""INSERT INTO api_tokens (name, role, token_sha256, models, expires_at)
            VALUES ($1, $2, $3, $4, now() + $5::interval) RETURNING {_INFO}""",
        name, role, hash_token(token), globs, expires_in))
    return token, TokenInfo(**dict(row))


async def list_tokens(db: asyncpg.Pool | asyncpg.Connection, *, include_revoked: bool = False) -> list[TokenInfo]:
    rows = await db.fetch(
        f"""SELECT {_INFO} FROM api_tokens WHERE $1 OR revoked_at IS NULL ORDER BY id""", include_revoked)
    return [TokenInfo(**dict(r)) for r in rows]


async def revoke(db: asyncpg.Pool | asyncpg.Connection, which: str) -> list[TokenInfo]:
    """Revoke the token with id `which`, or every active token named `which`."""
    if which.isdigit():
        rows = await db.fetch(
            f"""UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
                RETURNING {_INFO}""", int(which))
    else:
        rows = await db.fetch(
            f"""UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
                RETURNING {_INFO}""", which)
    return [TokenInfo(**dict(r)) for r in rows]


async def signing_key(db: asyncpg.Pool | asyncpg.Connection) -> bytes:
    """The key that signs cursors: one per database, made by the first API instance."""
    await db.execute("INSERT INTO api_secrets (name, value) VALUES ('cursor', $1) ON CONFLICT DO NOTHING",
                     secrets.token_bytes(32))
    return bytes(await db.fetchval("SELECT value FROM api_secrets WHERE name = 'cursor'"))
