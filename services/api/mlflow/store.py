"""The MLflow API's SQL: the registry view (read only) and its own label tables (migration 0015).

Each label change runs in one transaction with its line in `mlflow_label_log` (the actor is the
token's name), so no label changes without a record of who changed it.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from ..queries import VERSION_FIELDS

Db = asyncpg.Pool | asyncpg.Connection
Conn = Any  # a connection from `pool.acquire()` (asyncpg's proxy type), in a transaction

_MODELS = """
    SELECT n.name,
           coalesce(mm.created_at, vm.created_at, r.created_at) AS created_at,
           greatest(mm.updated_at, vm.updated_at, r.created_at) AS updated_at,
           mm.description, mm.created_by, vm.champion,
           coalesce((SELECT jsonb_object_agg(t.key, t.value) FROM mlflow_model_tags t WHERE t.name = n.name),
                    '{}'::jsonb) AS tags
    FROM (SELECT name FROM view_models UNION SELECT name FROM mlflow_models
          UNION SELECT name FROM mlflow_registrations) n
    LEFT JOIN view_models vm ON vm.name = n.name
    LEFT JOIN mlflow_models mm ON mm.name = n.name
    LEFT JOIN LATERAL (SELECT min(created_at) AS created_at FROM mlflow_registrations x WHERE x.name = n.name) r
           ON true
    WHERE $1::text IS NULL OR n.name = $1
    ORDER BY n.name"""


async def models(db: Db, name: str | None = None) -> list[dict[str, Any]]:
    """Every model the registry knows (registered through any door), or the one named."""
    return [dict(r) for r in await db.fetch(_MODELS, name)]


async def model(db: Db, name: str) -> dict[str, Any] | None:
    found = await models(db, name)
    return found[0] if found else None


_VIEW = ", ".join(f"v.{c}" for c in VERSION_FIELDS)


async def versions(db: Db, name: str | None = None, version: int | None = None) -> list[dict[str, Any]]:
    """Versions as MLflow sees them: the view's rows with their labels, and the registrations
    MLflow made that the view does not have yet (`status` None)."""
    stored = await db.fetch(
        f"""SELECT {_VIEW}, l.description AS mlflow_description, l.tags AS mlflow_tags, r.event_id
            FROM view_versions v
            LEFT JOIN mlflow_version_labels l ON l.name = v.name AND l.version = v.version
            LEFT JOIN mlflow_registrations r ON r.name = v.name AND r.version = v.version
            WHERE ($1::text IS NULL OR v.name = $1) AND ($2::int IS NULL OR v.version = $2)
            ORDER BY v.name, v.version""", name, version)
    pending = await db.fetch(
        """SELECT r.name, r.version, 'none' AS stage, NULL AS status, r.source AS source_uri, r.run_id,
                  r.registered_by, r.created_at, r.created_at AS updated_at, r.event_id,
                  l.description AS mlflow_description, l.tags AS mlflow_tags
           FROM mlflow_registrations r
           LEFT JOIN mlflow_version_labels l ON l.name = r.name AND l.version = r.version
           WHERE ($1::text IS NULL OR r.name = $1) AND ($2::int IS NULL OR r.version = $2)
             AND NOT EXISTS (SELECT 1 FROM view_versions v WHERE v.name = r.name AND v.version = r.version)""",
        name, version)
    rows = [dict(r) for r in stored] + [dict(r, pending=True) for r in pending]
    return sorted(rows, key=lambda r: (r["name"], r["version"]))


async def version(db: Db, name: str, number: int) -> dict[str, Any] | None:
    found = await versions(db, name, number)
    return found[0] if found else None


async def aliases(db: Db, name: str | None = None) -> list[dict[str, Any]]:
    """The free-label aliases (the champion is the view's, not a row here)."""
    rows = await db.fetch("SELECT name, alias, version FROM mlflow_aliases WHERE $1::text IS NULL OR name = $1 "
                          "ORDER BY name, alias", name)
    return [dict(r) for r in rows]


async def champion(db: Db, name: str) -> int | None:
    value = await db.fetchval("SELECT champion FROM view_models WHERE name = $1", name)
    return None if value is None else int(value)


# ---------------------------------------------------------------------------- writes

async def _log(conn: Conn, actor: str, action: str, name: str, *, version: int | None = None,
               key: str | None = None, old: str | None = None, new: str | None = None) -> None:
    await conn.execute(
        """INSERT INTO mlflow_label_log (actor, action, name, version, key, old, new)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""", actor, action, name, version, key, old, new)


async def create_model(pool: asyncpg.Pool, name: str, description: str | None, tags: dict[str, str],
                       actor: str) -> bool:
    """False when the model already has an MLflow record."""
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            """INSERT INTO mlflow_models (name, description, created_by) VALUES ($1, $2, $3)
               ON CONFLICT (name) DO NOTHING RETURNING true""", name, description, actor)
        if not created:
            return False
        await _log(conn, actor, "model_created", name, new=description)
        for key, value in tags.items():
            await conn.execute("INSERT INTO mlflow_model_tags (name, key, value) VALUES ($1, $2, $3)",
                               name, key, value)
            await _log(conn, actor, "model_tag_set", name, key=key, new=value)
        return True


async def describe_model(pool: asyncpg.Pool, name: str, description: str, actor: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval("SELECT description FROM mlflow_models WHERE name = $1 FOR UPDATE", name)
        await conn.execute(
            """INSERT INTO mlflow_models (name, description, created_by) VALUES ($1, $2, $3)
               ON CONFLICT (name) DO UPDATE SET description = $2, updated_at = now()""", name, description, actor)
        await _log(conn, actor, "model_description_set", name, old=old, new=description)


async def set_model_tag(pool: asyncpg.Pool, name: str, key: str, value: str, actor: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval("SELECT value FROM mlflow_model_tags WHERE name = $1 AND key = $2", name, key)
        await conn.execute(
            """INSERT INTO mlflow_model_tags (name, key, value) VALUES ($1, $2, $3)
               ON CONFLICT (name, key) DO UPDATE SET value = $3""", name, key, value)
        await _log(conn, actor, "model_tag_set", name, key=key, old=old, new=value)


async def delete_model_tag(pool: asyncpg.Pool, name: str, key: str, actor: str) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval("DELETE FROM mlflow_model_tags WHERE name = $1 AND key = $2 RETURNING value",
                                  name, key)
        if old is None:
            return False
        await _log(conn, actor, "model_tag_deleted", name, key=key, old=old)
        return True


async def delete_model(pool: asyncpg.Pool, name: str, actor: str) -> None:
    """Forget a model's MLflow record, tags and aliases (only for a model without versions)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM mlflow_model_tags WHERE name = $1", name)
        await conn.execute("DELETE FROM mlflow_aliases WHERE name = $1", name)
        await conn.execute("DELETE FROM mlflow_models WHERE name = $1", name)
        await _log(conn, actor, "model_deleted", name)


async def describe_version(pool: asyncpg.Pool, name: str, number: int, description: str, actor: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval("SELECT description FROM mlflow_version_labels WHERE name = $1 AND version = $2",
                                  name, number)
        await conn.execute(
            """INSERT INTO mlflow_version_labels (name, version, description) VALUES ($1, $2, $3)
               ON CONFLICT (name, version) DO UPDATE SET description = $3, updated_at = now()""",
            name, number, description)
        await _log(conn, actor, "version_description_set", name, version=number, old=old, new=description)


async def set_version_tag(pool: asyncpg.Pool, name: str, number: int, key: str, value: str, actor: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval(
            "SELECT tags ->> $3 FROM mlflow_version_labels WHERE name = $1 AND version = $2", name, number, key)
        await conn.execute(
            """INSERT INTO mlflow_version_labels (name, version, tags)
               VALUES ($1, $2, jsonb_build_object($3::text, $4::text))
               ON CONFLICT (name, version) DO UPDATE
               SET tags = mlflow_version_labels.tags || jsonb_build_object($3::text, $4::text), updated_at = now()""",
            name, number, key, value)
        await _log(conn, actor, "version_tag_set", name, version=number, key=key, old=old, new=value)


async def delete_version_tag(pool: asyncpg.Pool, name: str, number: int, key: str, actor: str) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval(
            """UPDATE mlflow_version_labels l SET tags = l.tags - $3, updated_at = now()
               FROM (SELECT tags ->> $3 AS old FROM mlflow_version_labels
                     WHERE name = $1 AND version = $2 FOR UPDATE) before
               WHERE l.name = $1 AND l.version = $2 AND before.old IS NOT NULL RETURNING before.old""",
            name, number, key)
        if old is None:
            return False
        await _log(conn, actor, "version_tag_deleted", name, version=number, key=key, old=old)
        return True


async def set_alias(pool: asyncpg.Pool, name: str, alias: str, number: int, actor: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval("SELECT version FROM mlflow_aliases WHERE name = $1 AND alias = $2", name, alias)
        await conn.execute(
            """INSERT INTO mlflow_aliases (name, alias, version) VALUES ($1, $2, $3)
               ON CONFLICT (name, alias) DO UPDATE SET version = $3""", name, alias, number)
        await _log(conn, actor, "alias_set", name, version=number, key=alias,
                   old=None if old is None else str(old), new=str(number))


async def delete_alias(pool: asyncpg.Pool, name: str, alias: str, actor: str) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        old = await conn.fetchval("DELETE FROM mlflow_aliases WHERE name = $1 AND alias = $2 RETURNING version",
                                  name, alias)
        if old is None:
            return False
        await _log(conn, actor, "alias_deleted", name, version=old, key=alias, old=str(old))
        return True


async def reserve_version(pool: asyncpg.Pool, name: str, source: str, run_id: str | None, actor: str) -> int:
    """The next version number of `name`, held for an MLflow registration (unique: a second
    client racing for the same number takes the next one)."""
    for _ in range(10):
        try:
            return int(await pool.fetchval(
                """INSERT INTO mlflow_registrations (name, version, event_id, source, run_id, registered_by)
                   SELECT $1, 1 + greatest(
                       coalesce((SELECT max(version) FROM view_versions WHERE name = $1), 0),
                       coalesce((SELECT max(version) FROM mlflow_registrations WHERE name = $1), 0)),
                       $2, $3, $4, $5
                   RETURNING version""", name, uuid.uuid4(), source, run_id, actor))
        except asyncpg.UniqueViolationError:
            continue
    raise RuntimeError(f"could not reserve a version number of {name!r}: too many concurrent registrations")


async def registered(pool: asyncpg.Pool, name: str, number: int, event_id: uuid.UUID) -> None:
    await pool.execute("UPDATE mlflow_registrations SET event_id = $3 WHERE name = $1 AND version = $2",
                       name, number, event_id)


async def release(pool: asyncpg.Pool, name: str, number: int) -> None:
    """Nothing was published: the number is free again."""
    await pool.execute("DELETE FROM mlflow_registrations WHERE name = $1 AND version = $2", name, number)


async def label_log(db: Db, name: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, at, actor, action, name, version, key, old, new FROM mlflow_label_log "
                          "WHERE name = $1 ORDER BY id", name)
    return [dict(r) for r in rows]
