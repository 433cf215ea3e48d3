"""Writing the outbox with the commit in one round trip (literals in a simple-protocol
statement) stores exactly what the parametrised insert stores, wakes the relay, and never
commits a failed transaction."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import commit, sql_literal
from shared.events import RegistryAudit, RegistryAuditData, new_event
from shared.outbox import NOTIFY_CHANNEL, OutboxRow, write_outbox, write_outbox_and_commit
from tests.support import signing_service

# What a literal must survive: quotes, backslashes (an escape in a plain string when
# standard_conforming_strings is off), a dollar quote, text beyond ASCII.
AWKWARD = "it's \\ a \"quote\" $$ \\x41 é ✓ \U0001f600"


def _rows() -> list[OutboxRow]:
    audit = new_event(RegistryAudit, RegistryAuditData(action="probed", name="awkward-model", actor="modelreg/probe",
                                                       reason=AWKWARD),
                      source="modelreg/probe")
    return [OutboxRow.of(audit, headers={"x-awkward": AWKWARD}),
            OutboxRow("registry.dlq", AWKWARD, audit.to_json(), {}),
            OutboxRow("registry.dlq", None, audit.to_json(), {"content-type": "application/cloudevents+json"})]


async def _stored(db: asyncpg.Pool, service: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await db.fetch(
        "SELECT topic, key, value, headers FROM outbox WHERE service = $1 ORDER BY id", service)]


async def test_rows_written_with_the_commit_are_the_rows_the_parametrised_insert_writes(db: asyncpg.Pool) -> None:
    service = signing_service("lit")
    woken: list[str] = []

    def heard(*args: object) -> None:
        woken.append(str(args[-1]))

    rows = _rows()
    listener = await db.acquire()
    await listener.add_listener(NOTIFY_CHANNEL, heard)
    try:
        async with db.acquire() as conn:
            await conn.execute("BEGIN")
            await write_outbox_and_commit(conn, service, rows)
            assert not conn.is_in_transaction()
            last = await db.fetchval("SELECT max(id) FROM outbox WHERE service = $1", service)
            async with conn.transaction():
                await write_outbox(conn, service, rows)
        written = await _stored(db, service)
        # Ed25519 signatures are deterministic: the same rows signed by the same key are the same bytes.
        assert written[:3] == written[3:]
        assert [row[1] for row in written[:3]] == ["awkward-model", AWKWARD, None]
        for _ in range(50):
            if f"{service}:{last}" in woken:
                break
            await asyncio.sleep(0.05)
        assert f"{service}:{last}" in woken
    finally:
        await listener.remove_listener(NOTIFY_CHANNEL, heard)
        await db.release(listener)
        await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_a_failed_transaction_is_never_counted_as_committed(db: asyncpg.Pool) -> None:
    service = signing_service("failed")
    async with db.acquire() as conn:
        for rows in (_rows(), []):
            await conn.execute("BEGIN")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.execute("SELECT 1 / 0")
            with pytest.raises((asyncpg.InFailedSQLTransactionError, RuntimeError)):
                await write_outbox_and_commit(conn, service, rows)
            await conn.execute("ROLLBACK")
    assert await _stored(db, service) == []
    async with db.acquire() as conn:
        await conn.execute("BEGIN")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.execute("SELECT 1 / 0")
        with pytest.raises(RuntimeError, match="ended with ROLLBACK"):
            await commit(conn)


async def test_a_literal_reads_back_as_the_text_whatever_standard_conforming_strings_says(
        db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        for conforming in ("on", "off"):
            await conn.execute(f"SET standard_conforming_strings = {conforming}")
            assert await conn.fetchval(f"SELECT {sql_literal(AWKWARD)}") == AWKWARD
        await conn.execute("RESET standard_conforming_strings")
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("a\x00b")
