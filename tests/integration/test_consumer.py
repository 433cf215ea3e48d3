"""The batch processor on real PostgreSQL: idempotency, refusals that undo only their own
event, and dead letters written once, however often a batch is delivered."""

from __future__ import annotations

import json

import asyncpg

from shared.consumer import BatchProcessor, Record, ServiceHandlers, Tx
from shared.events import InvalidEvent, ModelRegistered
from tests.support import cloudevent, signing_service


def record(offset: int, event: dict | bytes, topic: str = "model.registered") -> Record:
    value = event if isinstance(event, bytes) else json.dumps(event).encode()
    return Record(topic, 0, offset, b"k", value)


async def test_a_refusal_undoes_only_its_own_writes_and_redelivery_changes_nothing(db: asyncpg.Pool) -> None:
    service = signing_service("probe")
    await db.execute(f'CREATE TABLE "{service}" (name text PRIMARY KEY)')

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        await tx.conn.execute(f'INSERT INTO "{service}" VALUES ($1)', event.data.name)
        if event.data.name.startswith("refuse"):
            raise InvalidEvent("unknown_version", "refused after writing")
        tx.audit("probed", name=event.data.name)

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    events = [cloudevent("model.registered", {"name": name, "artifact": artifact})
              for name in ("keep-a", "refuse-b", "keep-c")]
    batch = [record(i, e) for i, e in enumerate(events)] + [record(3, b"not json")]
    processor = BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle}))
    for _ in range(3):  # delivered three times: applied once
        await processor.process(batch)

    assert {r["name"] for r in await db.fetch(f'SELECT name FROM "{service}"')} == {"keep-a", "keep-c"}
    rows = await db.fetch("SELECT topic, value FROM outbox WHERE service = $1 ORDER BY id", service)
    topics = [r["topic"] for r in rows]
    assert topics.count("registry.dlq") == 2  # the refusal and the non-JSON message, once each
    audits = [json.loads(r["value"])["data"] for r in rows if r["topic"] == "registry.audit"]
    assert sorted(a["action"] for a in audits) == ["dead_lettered", "dead_lettered", "probed", "probed"]
    assert await db.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1", service) == 4
    await db.execute("DELETE FROM outbox WHERE service = $1", service)
