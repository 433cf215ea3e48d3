"""PostgreSQL: the connection pool and versioned migrations applied at start-up."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

# A connection of its own (`connect`) or one a pool lends (`async with pool.acquire()`): the
# statements a function runs work the same on either.
AnyConnection = asyncpg.Connection | PoolConnectionProxy

# pg_advisory_lock key that serialises migrations across every instance starting at once.
_MIGRATION_LOCK = 0x6D6F64656C726567  # "modelreg"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("json", encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog")
    # jsonb in its binary wire format (a version byte, then the text): COPY needs it.
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog",
                              format="binary")


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value, default=str)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


def service_role(configured: str | None, service: str) -> str | None:
    """The PostgreSQL role `service`'s connections act as (migration 0009 creates them):
    MODELREG_DB_ROLE when set ("none": the login user's own rights), else modelreg_<service>."""
    if configured == "none":
        return None
    return configured or f"modelreg_{service}"


def sql_literal(text: str) -> str:
    """`text` as a PostgreSQL string literal, for a statement sent by the simple query protocol
    (several statements in one round trip, but no parameters). An escape string (E'...'), so
    that it reads the same whatever standard_conforming_strings says."""
    if "\x00" in text:
        raise ValueError("PostgreSQL text cannot hold NUL")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


async def commit(conn: AnyConnection, statements: str = "") -> None:
    """COMMIT (after `statements`, in the same round trip). PostgreSQL answers COMMIT with
    ROLLBACK, and no error, in a failed transaction: a handler that swallowed a database
    error must not have its work count as done."""
    status = await conn.execute(f"{statements}; COMMIT" if statements else "COMMIT")
    if status != "COMMIT":
        raise RuntimeError(f"the transaction ended with {status}, not COMMIT")


async def roll_back(conn: AnyConnection) -> None:
    """End a failed transaction. A connection that cannot say ROLLBACK is broken: the pool
    closes it on release, and the server rolls back with it."""
    if conn.is_closed():
        return
    with contextlib.suppress(Exception):
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4,
                      role: str | None = None) -> asyncpg.Pool:
    """A pool sized for a 2-core service: batches, not connections, carry the throughput.

    With `role`, every connection acts as that role from its start: it is sent as the `role`
    startup parameter, not a SET a borrower could undo.

    A connection goes back to the pool as asyncpg leaves it (an open transaction rolled back,
    listeners removed) without its default reset query (advisory unlocks, UNLISTEN, RESET
    ALL): a statement for every borrowing, an eighth of all statements under a light load.
    Borrowers keep no session state: what takes a session lock unlocks it, or closes the
    connection when it cannot (`services/audit/checkpointer.py`)."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     init=_init_connection, reset=_no_session_to_reset, command_timeout=60,
                                     server_settings={"role": role} if role else None)


async def _no_session_to_reset(conn: asyncpg.Connection) -> None:
    """See `create_pool`."""


async def connect(dsn: str, *, role: str | None = None) -> asyncpg.Connection:
    """One connection outside a pool, acting as `role` from its start (see `create_pool`)."""
    conn = await asyncpg.connect(dsn, command_timeout=60, server_settings={"role": role} if role else None)
    await _init_connection(conn)
    return conn


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """`shared/migrations/NNNN_name.sql`, in version order."""
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if len({m.version for m in found}) != len(found):
        raise RuntimeError("two migrations share a version number")
    return found


class MigrationError(RuntimeError):
    pass


async def migrate(dsn: str) -> list[Migration]:
    """Apply pending migrations, each in its own transaction; returns the ones applied.

    Several instances may start at once: an advisory lock lets one apply while the rest wait,
    then find nothing left to do. An applied migration whose file changed is an error, not a
    silent skip.
    """
    conn = await asyncpg.connect(dsn, command_timeout=300)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            # Only when missing: a service's own login user (production) may not create tables,
            # and finds every migration applied by the owner.
            if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
                await conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                           version integer PRIMARY KEY,
                           name text NOT NULL,
                           checksum text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
            applied = {r["version"]: r["checksum"] for r in
                       await conn.fetch("SELECT version, checksum FROM schema_migrations")}
            done = []
            for migration in load_migrations():
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version}_{migration.name} was changed after "
                            "it was applied; add a new migration instead")
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version, migration.name, migration.checksum)
                log.info("applied migration %04d_%s", migration.version, migration.name)
                done.append(migration)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()


async def pending_migrations(conn: AnyConnection) -> list[int]:
    """Versions not yet applied (for readiness checks)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.version for m in load_migrations() if m.version not in applied]
