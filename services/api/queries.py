"""The read model's SQL: every query the API, the UI and the people's CLI run.

Reads only the registry view (view_models, view_versions, view_stage_changes,
view_evaluations) and the audit log; `db` is an asyncpg pool or connection. Rows come back as
plain dicts (jsonb already decoded by the pool's codec).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

Db = asyncpg.Pool | asyncpg.Connection

VERSION_FIELDS = ("name", "version", "stage", "status", "sha256", "size_bytes", "format", "artifact_uri",
                  "source_uri", "archive_uri", "run_id", "metrics", "params", "tags", "dataset", "signature",
                  "description", "registered_by", "correlation_id", "checks", "reasons", "created_at",
                  "updated_at", "last_seq")
AUDIT_FIELDS = ("seq", "event_id", "action", "name", "version", "from_stage", "to_stage", "actor", "reason",
                "evidence", "correlation_id", "causation_id", "source", "occurred_at", "recorded_at", "hash")


def _dicts(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]


async def list_models(db: Db, *, prefix: str | None = None, tag: tuple[str, str] | None = None,
                      stage: str | None = None, after: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Models by name, with a count of their versions per stage; `after` is the last name seen."""
    rows = await db.fetch(
        """SELECT m.name, m.champion, m.latest_version, m.version_count, m.champion_seq, m.created_at,
                  m.updated_at,
                  coalesce((SELECT jsonb_object_agg(s.stage, s.n) FROM
                            (SELECT v.stage, count(*) AS n FROM view_versions v WHERE v.name = m.name
                             GROUP BY v.stage) s), '{}'::jsonb) AS stages
           FROM view_models m
           WHERE ($1::text IS NULL OR starts_with(m.name, $1))
             AND ($2::jsonb IS NULL OR EXISTS (SELECT 1 FROM view_versions v
                                              WHERE v.name = m.name AND v.tags @> $2::jsonb))
             AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM view_versions v
                                              WHERE v.name = m.name AND v.stage = $3))
             AND ($4::text IS NULL OR m.name > $4)
           ORDER BY m.name
           LIMIT $5""",
        prefix, {tag[0]: tag[1]} if tag else None, stage, after, limit)
    return _dicts(rows)


async def get_model(db: Db, name: str) -> dict[str, Any] | None:
    row = await db.fetchrow(
        """SELECT name, champion, latest_version, version_count, champion_seq, created_at, updated_at
           FROM view_models WHERE name = $1""", name)
    return None if row is None else dict(row)


async def list_versions(db: Db, name: str) -> list[dict[str, Any]]:
    rows = await db.fetch(f"SELECT {', '.join(VERSION_FIELDS)} FROM view_versions WHERE name = $1 "
                          "ORDER BY version", name)
    return _dicts(rows)


async def get_version(db: Db, name: str, version: int) -> dict[str, Any] | None:
    row = await db.fetchrow(f"SELECT {', '.join(VERSION_FIELDS)} FROM view_versions "
                            "WHERE name = $1 AND version = $2", name, version)
    return None if row is None else dict(row)


async def evaluations(db: Db, name: str, version: int | None = None) -> list[dict[str, Any]]:
    """QA and monitoring results, oldest first (seq order: the order promotion judged them in)."""
    rows = await db.fetch(
        """SELECT seq, name, version, suite, environment, metrics, passed, evaluator, dataset, at
           FROM view_evaluations WHERE name = $1 AND ($2::int IS NULL OR version = $2)
           ORDER BY seq""", name, version)
    return _dicts(rows)


async def stage_changes(db: Db, name: str, version: int | None = None,
                        until: datetime | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT seq, name, version, from_stage, to_stage, reason, actor, evidence, at
           FROM view_stage_changes
           WHERE name = $1 AND ($2::int IS NULL OR version = $2) AND ($3::timestamptz IS NULL OR at <= $3)
           ORDER BY seq""", name, version, until)
    return _dicts(rows)


async def production(db: Db, name: str) -> dict[str, Any] | None:
    """The champion and its artifact in one indexed lookup (None: no such model)."""
    row = await db.fetchrow(
        """SELECT m.name, m.champion, m.champion_seq, v.artifact_uri, v.sha256, v.size_bytes, v.format,
                  v.status, c.at AS since
           FROM view_models m
           LEFT JOIN view_versions v ON v.name = m.name AND v.version = m.champion
           LEFT JOIN view_stage_changes c ON c.seq = m.champion_seq
           WHERE m.name = $1""", name)
    return None if row is None else dict(row)


async def audit(db: Db, *, model: str | None = None, version: int | None = None, action: str | None = None,
                since: datetime | None = None, until: datetime | None = None, after_seq: int | None = None,
                limit: int = 50, descending: bool = False) -> list[dict[str, Any]]:
    """Audit records by seq; `after_seq` continues a page (below it when descending)."""
    order = "DESC" if descending else "ASC"
    compare = "<" if descending else ">"
    rows = await db.fetch(
        f"""SELECT {', '.join(AUDIT_FIELDS)} FROM audit_log
            WHERE ($1::text IS NULL OR name = $1) AND ($2::int IS NULL OR version = $2)
              AND ($3::text IS NULL OR action = $3)
              AND ($4::timestamptz IS NULL OR occurred_at >= $4) AND ($5::timestamptz IS NULL OR occurred_at < $5)
              AND ($6::bigint IS NULL OR seq {compare} $6)
            ORDER BY seq {order} LIMIT $7""",
        model, version, action, since, until, after_seq, limit)
    return _dicts(rows)


async def last_seq(db: Db, name: str | None = None) -> int:
    """The newest audit record's seq (of one model's, if named): what the UI polls for changes."""
    if name is None:
        return int(await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log"))
    return int(await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log WHERE name = $1", name))


async def whole_view(db: Db, names: list[str] | None = None) -> dict[str, Any]:
    """Everything a policy dry-run judges: models, versions, results, stage changes, rejections."""
    args = (names,)
    models = await db.fetch("SELECT name, champion FROM view_models WHERE $1::text[] IS NULL OR name = ANY($1) "
                            "ORDER BY name", *args)
    versions = await db.fetch("SELECT name, version, stage, status, metrics, registered_by FROM view_versions "
                              "WHERE $1::text[] IS NULL OR name = ANY($1) ORDER BY name, version", *args)
    results = await db.fetch("SELECT seq, name, version, suite, environment, metrics, passed, evaluator "
                             "FROM view_evaluations "
                             "WHERE $1::text[] IS NULL OR name = ANY($1) ORDER BY seq", *args)
    changes = await db.fetch("SELECT seq, name, version, from_stage, to_stage, reason, at FROM view_stage_changes "
                             "WHERE $1::text[] IS NULL OR name = ANY($1) ORDER BY seq", *args)
    rejected = await db.fetch("SELECT name, version, max(occurred_at) AS at FROM audit_log "
                              "WHERE action IN ('rejected', 'quarantined') AND version IS NOT NULL "
                              "AND ($1::text[] IS NULL OR name = ANY($1)) GROUP BY name, version", *args)
    return {"models": _dicts(models), "versions": _dicts(versions), "results": _dicts(results),
            "changes": _dicts(changes), "rejected": _dicts(rejected)}
