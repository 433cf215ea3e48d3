"""Bearer tokens and roles.

A token is 32 random bytes (urlsafe, prefixed `mr_`); only its SHA-256 is stored, so the table
never holds a usable secret and a lookup by hash is as good as a constant-time comparison. The
token's name is its identity: it becomes the `actor` of the events it causes. Tokens are never
logged; `describe` shows the first characters at most.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

Role = Literal["reader", "publisher", "approver", "admin"]
ROLES: tuple[Role, ...] = ("reader", "publisher", "approver", "admin")
# Each role may do what the ones before it may: admin ⊇ approver ⊇ publisher ⊇ reader.
_RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX = "mr_"
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_TOKEN_NAME = re.compile(TOKEN_NAME_PATTERN)
_TOKEN = re.compile(r"^mr_[A-Za-z0-9_-]{43}$")

# What each kind of request needs.
READ: Role = "reader"
PUBLISH: Role = "publisher"   # register versions, report evaluations
APPROVE: Role = "approver"    # request promotions


def allows(role: str | None, needed: Role) -> bool:
    """Whether a token of `role` may do what needs `needed` (None: no token)."""
    return role in _RANK and _RANK[role] >= _RANK[needed]


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
    """Who is calling: the token's id, name (the actor) and role."""

    token_id: int
    name: str
    role: Role


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at,
                "last_used_at": self.last_used_at, "revoked_at": self.revoked_at}


# ---------------------------------------------------------------------------- storage

async def identify(db: asyncpg.Pool | asyncpg.Connection, token: str) -> Identity | None:
    """The active token's identity, or None; records its use at most once a minute (one round trip)."""
    if not looks_like_token(token):
        return None
    row = await db.fetchrow(
        """WITH found AS (SELECT id, name, role, last_used_at FROM api_tokens
                          WHERE token_sha256 = $1 AND revoked_at IS NULL),
                used AS (UPDATE api_tokens SET last_used_at = now() FROM found
                         WHERE api_tokens.id = found.id
                           AND (found.last_used_at IS NULL OR found.last_used_at < now() - interval '1 minute'))
           SELECT id, name, role FROM found""", hash_token(token))
    return None if row is None else Identity(row["id"], row["name"], row["role"])


async def create(db: asyncpg.Pool | asyncpg.Connection, *, name: str, role: Role) -> tuple[str, TokenInfo]:
    """A new token: returns the token itself (shown once, never stored) and its record."""
    if not valid_name(name):
        raise ValueError(f"token name {name!r}: letters, digits, '.', '_', '@' and '-', at most 64, "
                         "starting with a letter or digit")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    token = new_token()
    row = await db.fetchrow(
        """INSERT INTO api_tokens (name, role, token_sha256) VALUES ($1, $2, $3)
           RETURNING id, name, role, created_at, last_used_at, revoked_at""", name, role, hash_token(token))
    return token, TokenInfo(**dict(row))


async def list_tokens(db: asyncpg.Pool | asyncpg.Connection, *, include_revoked: bool = False) -> list[TokenInfo]:
    rows = await db.fetch(
        """SELECT id, name, role, created_at, last_used_at, revoked_at FROM api_tokens
           WHERE $1 OR revoked_at IS NULL ORDER BY id""", include_revoked)
    return [TokenInfo(**dict(r)) for r in rows]


async def revoke(db: asyncpg.Pool | asyncpg.Connection, which: str) -> list[TokenInfo]:
    """Revoke the token with id `which`, or every active token named `which`."""
    if which.isdigit():
        rows = await db.fetch(
            """UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
               RETURNING id, name, role, created_at, last_used_at, revoked_at""", int(which))
    else:
        rows = await db.fetch(
            """UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
               RETURNING id, name, role, created_at, last_used_at, revoked_at""", which)
    return [TokenInfo(**dict(r)) for r in rows]


async def signing_key(db: asyncpg.Pool | asyncpg.Connection) -> bytes:
    """The key that signs cursors: one per database, made by the first API instance."""
    await db.execute("INSERT INTO api_secrets (name, value) VALUES ('cursor', $1) ON CONFLICT DO NOTHING",
                     secrets.token_bytes(32))
    return bytes(await db.fetchval("SELECT value FROM api_secrets WHERE name = 'cursor'"))
