"""The audit writer's dead-letter office: `registry.dlq` -> `dead_letters`, and redrives.

Why the audit writer performs redrives (and not the CLI or the API):
- a redrive must leave a signed `registry.audit` record, and only services hold signing keys;
  the CLI (ops at a terminal) and the API (its tokens' holders) only *ask*, by setting
  `redrive_requested_*` on the letter, and the requester becomes the record's actor;
- the record is republished through the audit writer's outbox in the same transaction that
  marks the letter redriven and writes the audit record, so a redrive happens exactly once
  whatever crashes, and a second request finds the letter already taken and changes nothing;
- the bytes go out exactly as they were received (not re-signed): an internal event keeps the
  signature of the service that emitted it, so it is believed again, and no one can redrive
  into existence an event no service signed. The audit writer's Kafka principal may write the
  topics services consume for this (shared/kafka_acls.py).

A consumer that refused a *parsed* event recorded its id as processed and would skip the same
bytes: the redrive forgets that one row (`processed_events` of that consumer and event), so
only the consumer that dead-lettered it handles it again; the others still see a duplicate.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from shared import dead_letters
from shared.consumer import ServiceHandlers
from shared.events import CONTENT_TYPE, CloudEvent, RegistryAudit, new_event
from shared.outbox import OutboxRow, write_outbox
from shared.runtime import Resources, ServiceBuilder, every

log = logging.getLogger(__name__)

REDRIVE_POLL_SECONDS = 1.0
REDRIVE_BATCH = 100


async def on_dlq_batch(conn: asyncpg.Connection, events: list[CloudEvent[Any]]) -> None:
    """A batch's fresh DLQ events, stored in its transaction (idempotent by the DLQ event id)."""
    await dead_letters.record(conn, [dead_letters.letter_of(e) for e in events])


class Redriver:
    """Performs requested redrives, a batch per transaction, as the service `service`."""

    def __init__(self, pool: asyncpg.Pool, service: str) -> None:
        self._pool = pool
        self._service = service
        self.redriven = 0

    async def tick(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, service, kind, original_topic, "partition", "offset", key, payload,
                          original_event_id, correlation_id, redrive_requested_at, redrive_requested_by
                   FROM dead_letters WHERE redrive_requested_at IS NOT NULL AND redriven_at IS NULL
                   ORDER BY redrive_requested_at, dead_lettered_at LIMIT $1 FOR UPDATE SKIP LOCKED""",
                REDRIVE_BATCH)
            if not rows:
                return 0
            forget = [(r["service"], r["original_event_id"]) for r in rows if r["original_event_id"] is not None]
            if forget:
                await conn.executemany("DELETE FROM processed_events WHERE consumer = $1 AND event_id = $2", forget)
            # The original bytes, unsigned by us and in request order, before the audit rows.
            await conn.executemany(
                "INSERT INTO outbox (service, topic, key, value, headers) VALUES ($1, $2, $3, $4, $5)",
                [(self._service, r["original_topic"], r["key"], r["payload"], {"content-type": CONTENT_TYPE})
                 for r in rows])
            audits = [new_event(RegistryAudit, dead_letters.redriven_audit(r), source=f"modelreg/{self._service}",
                                correlationid=r["correlation_id"] or r["id"], causationid=r["id"]) for r in rows]
            await write_outbox(conn, self._service, [OutboxRow.of(a, key=r["key"])
                                                     for a, r in zip(audits, rows, strict=True)])
            await conn.execute(
                """UPDATE dead_letters SET redriven_at = now(), redriven_by = redrive_requested_by
                   WHERE id = ANY($1::uuid[])""", [r["id"] for r in rows])
        for row in rows:
            log.info("redrove dead letter %s (%s from %s) to %s at %s's request", row["id"], row["kind"],
                     row["service"], row["original_topic"], row["redrive_requested_by"])
        self.redriven += len(rows)
        return len(rows)


def serving_dead_letters(build: ServiceBuilder) -> ServiceBuilder:
    """`build`'s service, also projecting `registry.dlq` and performing redrives."""
    def built(resources: Resources) -> ServiceHandlers:
        handlers = build(resources)
        redriver = Redriver(resources.pool, handlers.name)
        handlers.batch_handlers["registry.dlq"] = on_dlq_batch
        handlers.background = (*handlers.background,
                               lambda: every(REDRIVE_POLL_SECONDS, redriver.tick, "dead-letter redrive"))
        return handlers
    return built
