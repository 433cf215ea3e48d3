"""promotion's SQL: versions and their stages, evaluations, approvals, the stage history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .logic import Restorable, Result


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: int
    stage: str
    sha256: str
    artifact_uri: str
    registered_by: str | None
    correlation_id: uuid.UUID | None
    validated: bool
    blocked: str | None
    previous_champion: int | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> VersionRow:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


_COLUMNS = ", ".join(VersionRow.__dataclass_fields__)


async def lock_model(conn: asyncpg.Connection, name: str) -> None:
    """Decisions about one model are serial, across instances too (until commit)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('promotion:' || $1, 0))", name)


async def locked_version(conn: asyncpg.Connection, name: str, version: int) -> VersionRow | None:
    """`lock_model` and `get_version` in one round trip."""
    row = await conn.fetchrow(
        f"""SELECT {", ".join("v." + c for c in VersionRow.__dataclass_fields__)}
            FROM (SELECT pg_advisory_xact_lock(hashtextextended('promotion:' || $1, 0))) AS lock
            LEFT JOIN promotion_versions v ON v.name = $1 AND v.version = $2""", name, version)
    return VersionRow.of(row) if row is not None and row["name"] is not None else None


async def add_version(conn: asyncpg.Connection, *, name: str, version: int, sha256: str,
                      artifact_uri: str, registered_by: str | None, correlation_id: uuid.UUID,
                      traceparent: str | None) -> list[asyncpg.Record]:
    """Record a version and take back the events that waited for it, in one statement."""
    return await conn.fetch(
        """WITH added AS (
               INSERT INTO promotion_versions (name, version, sha256, artifact_uri, registered_by,
                                               correlation_id, traceparent)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name, version) DO NOTHING),
           waited AS (
               DELETE FROM promotion_deferred WHERE name = $1 AND version = $2
               RETURNING event_id, topic, partition, "offset", payload, first_seen)
           SELECT * FROM waited""",
        name, version, sha256, artifact_uri, registered_by, correlation_id, traceparent)


async def traceparent(conn: asyncpg.Connection, name: str, version: int) -> str | None:
    return await conn.fetchval("SELECT traceparent FROM promotion_versions WHERE name = $1 AND version = $2",
                               name, version)


async def get_version(conn: asyncpg.Connection, name: str, version: int) -> VersionRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM promotion_versions WHERE name = $1 AND version = $2",
                              name, version)
    return VersionRow.of(row) if row else None


async def champion(conn: asyncpg.Connection, name: str) -> VersionRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM promotion_versions WHERE name = $1 AND stage = 'production'", name)
    return VersionRow.of(row) if row else None


async def update(conn: asyncpg.Connection, name: str, version: int, **fields: Any) -> None:
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(fields, start=3))
    await conn.execute(
        f"UPDATE promotion_versions SET {assignments} WHERE name = $1 AND version = $2",
        name, version, *fields.values())


async def set_stage(conn: asyncpg.Connection, row: VersionRow, to_stage: str, *, reason: str, actor: str,
                    event_id: uuid.UUID, evidence: dict[str, Any], **fields: Any) -> None:
    """Move `row` and record the move in the stage history: one statement."""
    assignments = "".join(f", {column} = ${i}" for i, column in enumerate(fields, start=10))
    await conn.execute(
        f"""WITH moved AS (
                UPDATE promotion_versions SET stage = $4, stage_changed_at = now(){assignments}
                WHERE name = $1 AND version = $2 RETURNING name)
            INSERT INTO stage_history (name, version, from_stage, to_stage, reason, actor, event_id,
                                       correlation_id, evidence)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM moved""",
        row.name, row.version, row.stage, to_stage, reason, actor, event_id, row.correlation_id, evidence,
        *fields.values())


async def add_evaluation(conn: asyncpg.Connection, *, event_id: uuid.UUID, name: str, version: int,
                         suite: str, environment: str, metrics: dict[str, float], passed: bool | None,
                         dataset: dict[str, Any] | None, evaluator: str | None, evaluated_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO evaluations (event_id, name, version, suite, environment, metrics, passed,
                                    dataset, evaluator, evaluated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING""",
        event_id, name, version, suite, environment, metrics, passed, dataset, evaluator, evaluated_at)


async def results_with_champion(conn: asyncpg.Connection, name: str,
                                version: int) -> tuple[list[Result], VersionRow | None, list[Result]]:
    """A candidate's results, the champion, and the champion's results: two round trips."""
    champion_row = await champion(conn, name)
    versions = [version] + ([champion_row.version] if champion_row and champion_row.version != version else [])
    rows = await conn.fetch(
        """SELECT version, id, suite, environment, metrics, passed FROM evaluations
           WHERE name = $1 AND version = ANY($2::int[]) ORDER BY id""", name, versions)
    mine = [Result(r["suite"], r["environment"], r["metrics"], r["passed"], r["id"]) for r in rows
            if r["version"] == version]
    theirs = [Result(r["suite"], r["environment"], r["metrics"], r["passed"], r["id"]) for r in rows
              if champion_row is not None and r["version"] == champion_row.version]
    return mine, champion_row, theirs


async def results(conn: asyncpg.Connection, name: str, version: int) -> list[Result]:
    rows = await conn.fetch(
        """SELECT id, suite, environment, metrics, passed FROM evaluations
           WHERE name = $1 AND version = $2 ORDER BY id""", name, version)
    return [Result(r["suite"], r["environment"], r["metrics"], r["passed"], r["id"]) for r in rows]


async def restorable(conn: asyncpg.Connection, name: str) -> list[Restorable]:
    rows = await conn.fetch(
        """SELECT version, extract(epoch FROM superseded_at) * 1e6 AS seq FROM promotion_versions
           WHERE name = $1 AND stage = 'none' AND superseded_at IS NOT NULL AND blocked IS NULL""", name)
    return [Restorable(r["version"], int(r["seq"])) for r in rows]


async def approvals(conn: asyncpg.Connection, name: str, version: int, to_stage: str) -> set[str]:
    rows = await conn.fetch("SELECT actor FROM approvals WHERE name = $1 AND version = $2 AND to_stage = $3",
                            name, version, to_stage)
    return {r["actor"] for r in rows}


async def add_approval(conn: asyncpg.Connection, *, name: str, version: int, to_stage: str, actor: str,
                       reason: str, event_id: uuid.UUID) -> None:
    await conn.execute(
        """INSERT INTO approvals (name, version, to_stage, actor, reason, event_id)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
        name, version, to_stage, actor, reason, event_id)


async def clear_approvals(conn: asyncpg.Connection, name: str, version: int, to_stage: str) -> None:
    await conn.execute("DELETE FROM approvals WHERE name = $1 AND version = $2 AND to_stage = $3",
                       name, version, to_stage)
