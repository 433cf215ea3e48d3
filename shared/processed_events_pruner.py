"""The periodic job that deletes a consumer's processed-event ids Kafka can no longer
redeliver (shared/idempotency_pruning.py decides which), in small batches.

Each batch is its own short statement, so no lock is held for long: rows the consumer inserts
are newer than the cutoff and never touched. (No FOR UPDATE SKIP LOCKED: that needs UPDATE
rights the services' roles do not have, and the only other writer of old rows, the audit
writer forgetting one id for a redrive, holds it for one short transaction.)
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from shared import metrics
from shared.idempotency_pruning import prune_before

log = logging.getLogger(__name__)

BATCH_ROWS = 2000
INTERVAL_SECONDS = 3600.0


async def prune_processed_events(pool: asyncpg.Pool, consumer: str, before: datetime, *,
                                 batch_rows: int = BATCH_ROWS, pause: float = 0.05) -> int:
    """Delete `consumer`'s rows processed before `before`, `batch_rows` at a time; returns
    how many went."""
    total = 0
    while True:
        async with pool.acquire() as conn:
            deleted: int = await conn.fetchval(
                """WITH doomed AS (
                       SELECT event_id FROM processed_events
                       WHERE consumer = $1 AND processed_at < $2
                       ORDER BY processed_at LIMIT $3),
                   gone AS (
                       DELETE FROM processed_events p USING doomed
                       WHERE p.consumer = $1 AND p.event_id = doomed.event_id
                       RETURNING 1)
                   SELECT count(*) FROM gone""",
                consumer, before, batch_rows)
        total += deleted
        metrics.PROCESSED_EVENTS_PRUNED.labels(consumer).inc(deleted)
        if deleted < batch_rows:
            return total
        await asyncio.sleep(pause)  # let the consumer's own transactions through between batches


async def prune_once(pool: asyncpg.Pool, consumer: str, window: timedelta | None) -> int:
    """One round of the periodic job: nothing when `window` is None (a topic kept forever)."""
    before = prune_before(datetime.now(UTC), window)
    if before is None:
        return 0
    pruned = await prune_processed_events(pool, consumer, before)
    if pruned:
        log.info("%s: pruned %d processed-event ids older than %s", consumer, pruned, before.isoformat())
    return pruned
