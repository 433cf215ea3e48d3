"""ingest's SQL: the registry of record (models, model_versions)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.db import AnyConnection


@dataclass(frozen=True)
class StoredVersion:
    version: int
    sha256: str
    status: str


async def next_version(conn: asyncpg.Connection, name: str) -> int:
    """Hand out the next version number; the row lock serialises concurrent registrations."""
    version: int = await conn.fetchval(
        """INSERT INTO models (name, last_version) VALUES ($1, 1)
           ON CONFLICT (name) DO UPDATE SET last_version = models.last_version + 1
           RETURNING last_version""", name)
    return version


async def reserve_version(conn: asyncpg.Connection, name: str, version: int) -> None:
    """Make sure `models` exists and never hands out `version` again."""
    await conn.execute(
        """INSERT INTO models (name, last_version) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET last_version = GREATEST(models.last_version, $2)""",
        name, version)


async def reserve_versions(conn: AnyConnection, keys: list[tuple[str, int]]) -> None:
    """`reserve_version` for many, in one statement (in name order: concurrent batches lock
    the same rows in the same order)."""
    highest: dict[str, int] = {}
    for name, version in keys:
        highest[name] = max(version, highest.get(name, 0))
    if highest:
        await conn.execute(
            """INSERT INTO models (name, last_version)
               SELECT name, v FROM unnest($1::text[], $2::int[]) AS t(name, v) ORDER BY name
               ON CONFLICT (name) DO UPDATE SET last_version = GREATEST(models.last_version, EXCLUDED.last_version)""",
            list(highest), list(highest.values()))


async def find_version(conn: asyncpg.Connection, name: str, version: int) -> StoredVersion | None:
    row = await conn.fetchrow(
        "SELECT version, sha256, status FROM model_versions WHERE name = $1 AND version = $2 FOR UPDATE",
        name, version)
    return StoredVersion(row["version"], row["sha256"], row["status"]) if row else None


class NewVersions:
    """A batch's new `model_versions` rows, written together once its handlers are done (one
    pipelined statement, not one round trip per version); until then `find` shows them as if
    they were written, so a version registered twice in one batch is still seen the second time."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], dict[str, Any]] = {}

    def add(self, **fields: Any) -> None:
        self._rows[(fields["name"], fields["version"])] = fields

    def find(self, name: str, version: int) -> StoredVersion | None:
        row = self._rows.get((name, version))
        return StoredVersion(row["version"], row["sha256"], row["status"]) if row else None

    async def write(self, conn: asyncpg.Connection) -> None:
        if not self._rows:
            return
        columns = list(next(iter(self._rows.values())))  # every row names the same columns (_record)
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        await conn.executemany(f"INSERT INTO model_versions ({', '.join(columns)}) VALUES ({placeholders})",
                               [[row[c] for c in columns] for row in self._rows.values()])


async def existing_versions(conn: AnyConnection, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
    if not keys:
        return set()
    rows = await conn.fetch(
        """SELECT v.name, v.version FROM model_versions v
           JOIN unnest($1::text[], $2::int[]) AS k(name, version) USING (name, version)""",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["name"], r["version"]) for r in rows}


async def claim_next_versions(conn: AnyConnection,
                              requests: list[tuple[uuid.UUID, str]]) -> dict[uuid.UUID, int]:
    """A version number per registration event, in event order per name, reused when the
    event is seen again. One statement whatever the batch's size, so atomic without a
    transaction of its own: a claim costs one round trip, not five (BEGIN, three, COMMIT)."""
    wanted = dict(requests)  # an event twice: one claim
    if not wanted:
        return {}
    rows = await conn.fetch(
        """WITH req AS (
               SELECT * FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS r(event_id, name, ord)),
           old AS (
               SELECT event_id, version FROM ingest_claims WHERE event_id = ANY($1::uuid[])),
           new AS (
               SELECT req.* FROM req WHERE NOT EXISTS (SELECT 1 FROM old WHERE old.event_id = req.event_id)),
           counts AS (
               SELECT name, count(*)::int AS n FROM new GROUP BY name),
           -- The row lock of each name's models row serialises concurrent claims (name order:
           -- concurrent batches lock the same rows in the same order).
           bumped AS (
               INSERT INTO models (name, last_version)
               SELECT name, n FROM counts ORDER BY name
               ON CONFLICT (name) DO UPDATE SET last_version = models.last_version + EXCLUDED.last_version
               RETURNING name, last_version),
           numbered AS (
               SELECT new.event_id, new.name,
                      (bumped.last_version - counts.n
                       + row_number() OVER (PARTITION BY new.name ORDER BY new.ord))::int AS version
               FROM new JOIN counts USING (name) JOIN bumped USING (name)),
           claimed AS (
               INSERT INTO ingest_claims (event_id, name, version) SELECT event_id, name, version FROM numbered)
           SELECT event_id, version FROM old
           UNION ALL
           SELECT event_id, version FROM numbered""",
        list(wanted), list(wanted.values()))
    return {r["event_id"]: r["version"] for r in rows}
