"""ingest's SQL: the registry of record (models, model_versions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class StoredVersion:
    version: int
    sha256: str
    status: str


async def next_version(conn: asyncpg.Connection, name: str) -> int:
    """Hand out the next version number; the row lock serialises concurrent registrations."""
    return await conn.fetchval(
        """INSERT INTO models (name, last_version) VALUES ($1, 1)
           ON CONFLICT (name) DO UPDATE SET last_version = models.last_version + 1
           RETURNING last_version""", name)


async def reserve_version(conn: asyncpg.Connection, name: str, version: int) -> None:
    """Make sure `models` exists and never hands out `version` again."""
    await conn.execute(
        """INSERT INTO models (name, last_version) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET last_version = GREATEST(models.last_version, $2)""",
        name, version)


async def find_version(conn: asyncpg.Connection, name: str, version: int) -> StoredVersion | None:
    row = await conn.fetchrow(
        "SELECT version, sha256, status FROM model_versions WHERE name = $1 AND version = $2 FOR UPDATE",
        name, version)
    return StoredVersion(row["version"], row["sha256"], row["status"]) if row else None


async def insert_version(conn: asyncpg.Connection, **fields: Any) -> None:
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    await conn.execute(f"INSERT INTO model_versions ({columns}) VALUES ({placeholders})",
                       *fields.values())
