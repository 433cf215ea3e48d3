"""Events about a version promotion has not seen yet: held, replayed, or dead-lettered.

Kafka orders one partition, not topics against each other, so `model.validated` or a QA
result can overtake the `model.ingested` that introduces the version. Such an event is held
(the consumer still commits it) and replayed in the transaction that records the version;
one still waiting after the grace period was about a version that does not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg

from shared import metrics
from shared.consumer import Record, Tx, dead_letter_rows, unit_of_work
from shared.events import CloudEvent, InvalidEvent, parse_event
from shared.runtime import every

log = logging.getLogger(__name__)

Replay = Callable[[Tx, CloudEvent[Any]], Awaitable[None]]
# A held event: a row of the table, or one held earlier in the same batch (not stored yet).
HeldRow = asyncpg.Record | dict[str, Any]


async def replay(tx: Tx, name: str, rows: list[HeldRow], handlers: dict[str, Replay]) -> int:
    """Apply what waited for this version (taken from the table by the caller), in arrival
    order, inside `tx`."""
    for row in sorted(rows, key=lambda r: (r["first_seen"], r["offset"] or 0)):
        event = parse_event(row["topic"], row["payload"])
        record = Record(row["topic"], row["partition"] or 0, row["offset"] or 0, name.encode(), row["payload"])
        await handlers[row["topic"]](tx.caused_by(event, record), event)
    return len(rows)


async def expire_forever(pool: asyncpg.Pool, service: str, grace: timedelta,
                         lag: Callable[[str], Awaitable[dict[int, int] | None]], interval: float = 1.0) -> None:
    """Expire held events of the partitions this instance consumes and has caught up on in
    `model.ingested` (a model's events share a partition number on every topic): behind a
    backlog, or on another replica's partitions, the awaited version may still be coming."""
    async def once() -> None:
        lags = await lag("model.ingested")
        caught_up = sorted(p for p, behind in (lags or {}).items() if behind == 0)
        if caught_up:
            await expire(pool, service, grace, caught_up)

    await every(interval, once, "expiring held events")


async def expire(pool: asyncpg.Pool, service: str, grace: timedelta, partitions: list[int]) -> int:
    """Dead-letter held events of `partitions` older than `grace`: their version never
    appeared. A model a batch is deciding about right now (its lock taken) is left alone."""
    async with unit_of_work(pool, service) as tx:
        rows = await tx.conn.fetch(
            """DELETE FROM promotion_deferred WHERE event_id IN (
                   SELECT event_id FROM promotion_deferred
                   WHERE first_seen < now() - $1::interval AND partition = ANY($2::int[])
                     AND pg_try_advisory_xact_lock(hashtextextended('promotion:' || name, 0))
                   ORDER BY first_seen LIMIT 500 FOR UPDATE SKIP LOCKED)
               RETURNING topic, name, version, partition, "offset", payload""", grace, partitions)
        for row in rows:
            record = Record(row["topic"], row["partition"] or 0, row["offset"] or 0, row["name"].encode(),
                            row["payload"])
            event = parse_event(row["topic"], row["payload"])
            error = InvalidEvent("unknown_version", f"{row['name']} v{row['version']} is not a registered "
                                                    f"version (waited {grace.total_seconds():g}s for it)")
            log.warning("%s: dead-lettered %s: %s", service, row["topic"], error.message)
            metrics.DEAD_LETTERS.labels(service, error.kind).inc()
            tx.rows.extend(dead_letter_rows(service, record, error, event))
        return len(rows)
