"""Pruning processed-event ids on a real database: only the consumer's rows older than the
cutoff go, in batches, and a redelivery of a kept id is still skipped."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.db import create_pool
from shared.processed_events_pruner import prune_processed_events
from shared.settings import Settings


async def test_only_old_rows_of_the_consumer_are_pruned_in_batches(settings: Settings, db: asyncpg.Pool) -> None:
    consumer, other = f"prune-{uuid.uuid4().hex[:8]}", f"prune-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old = [uuid.uuid4() for _ in range(25)]
    recent = [uuid.uuid4() for _ in range(5)]
    async with db.acquire() as conn:
        await conn.executemany(
            "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3)",
            [(consumer, i, now - timedelta(days=20)) for i in old]
            + [(consumer, i, now - timedelta(hours=1)) for i in recent]
            + [(other, i, now - timedelta(days=20)) for i in old])
    # As a service's own role (modelreg_ingest via modelreg_service): the grant is enough.
    pool = await create_pool(settings.dsn, role="modelreg_ingest")
    try:
        pruned = await prune_processed_events(pool, consumer, now - timedelta(days=15), batch_rows=10, pause=0)
    finally:
        await pool.close()
    assert pruned == 25
    async with db.acquire() as conn:
        left = {r[0] for r in await conn.fetch("SELECT event_id FROM processed_events WHERE consumer = $1", consumer)}
        assert left == set(recent)
        assert await conn.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1", other) == 25
        # A kept id still makes its redelivery a no-op (the consumer's insert finds it).
        again = await conn.fetch(
            "INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id", consumer, recent)
        assert again == []
