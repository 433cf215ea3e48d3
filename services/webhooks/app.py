"""webhooks: registry events to HTTP endpoints, signed (Standard Webhooks), retried, logged.

Two halves that share only the database:

- the consumer (its own group, every topic) records, in each batch's transaction, a pending
  delivery per event and endpoint that wants it (an outbox of HTTP messages); it never waits
  on a receiver, so a slow or dead endpoint cannot hold up consumption, and it passes over,
  unread, records of a type no active endpoint subscribes to;
- the delivery worker (services/webhooks/worker.py) sends what is due, outside any
  transaction, and logs every attempt.

Beside them, periodic chores (services/webhooks/maintenance.py): endpoint changes made by the
CLI and the API become signed audit records; the delivery log is pruned by age.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from shared.consumer import Batch, Record, ServiceHandlers, Tx
from shared.events import TOPICS, CloudEvent
from shared.runtime import Resources, ServiceApp, every
from shared.settings import Settings
from shared.webhooks import logic, ssrf, store

from .maintenance import AUDIT_POLL_SECONDS, PRUNE_EVERY_SECONDS, Maintenance
from .sender import Sender
from .worker import DeliveryWorker

SERVICE = store.SERVICE
log = logging.getLogger(__name__)


@dataclass
class Fanout:
    """One batch's work: the endpoints active when it began, the deliveries it owes them."""

    endpoints: list[store.Endpoint]
    pending: list[store.NewDelivery] = field(default_factory=list)


class Webhooks:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.settings = resources.settings
        self.worker: DeliveryWorker | None = None

    @contextlib.asynccontextmanager
    async def batch_scope(self, conn: asyncpg.Connection, events: list[Any]) -> AsyncIterator[Fanout]:
        """The active endpoints, read once per batch; the batch's deliveries, written at its end."""
        fanout = Fanout(await store.active_endpoints(conn))
        yield fanout
        await store.record_deliveries(conn, fanout.pending)

    async def select(self, records: Sequence[Record]) -> Sequence[Record]:
        """Only records of a type some active endpoint subscribes to are worth reading: with no
        endpoint, a batch costs one query instead of a signature check per event and a
        transaction. An endpoint gets the batches that begin after it is active.

        In the order they were published: a gathered batch holds a model's events from several
        topics, which Kafka does not order among themselves, so they are interleaved by the
        time their producer stamped, each topic's partition kept in its own order."""
        topics = await store.subscribed_topics(self.resources.pool)
        if logic.ALL_TOPICS not in topics:
            records = [record for record in records if record.topic in topics]
        return in_publication_order(records)

    async def on_event(self, tx: Tx, event: CloudEvent[Any]) -> None:
        fanout: Fanout = tx.batch.scope
        if not fanout.endpoints:
            return
        topic = event.topic
        data = event.data.model_dump(mode="json")
        model = event.model_name
        stage = logic.event_stage(topic, data)
        raw: str | None = None
        for endpoint in fanout.endpoints:
            if not logic.wants(endpoint.subscription, topic, model, stage):
                continue
            if raw is None:
                value = tx.record.value if tx.record is not None else None
                raw = value.decode() if value else event.model_dump_json(by_alias=True, exclude_none=True)
            envelope = {"data": data}
            for message in logic.messages_for(endpoint.format, endpoint.mlflow_events, topic, event.id, raw,
                                              envelope, event.time):
                fanout.pending.append(store.NewDelivery(endpoint.id, message, event.id, topic, model))

    async def after_commit(self, batch: Batch) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def deliver_forever(self) -> None:
        settings = self.settings
        allowed = ssrf.parse_networks(settings.webhooks_allow_networks)
        async with Sender(allowed=allowed, timeout_seconds=settings.webhooks_timeout_seconds,
                          max_response_bytes=settings.webhooks_max_response_bytes) as sender:
            self.worker = DeliveryWorker(
                self.resources.pool, sender,
                schedule=logic.RetrySchedule(timedelta(seconds=settings.webhooks_retry_first_seconds),
                                             timedelta(seconds=settings.webhooks_retry_max_seconds)),
                disable_after=timedelta(seconds=settings.webhooks_disable_after_seconds))
            await self.worker.run()


def in_publication_order(records: Sequence[Record]) -> list[Record]:
    """`records` merged by producer timestamp, ties in the order they came; each topic
    partition's records stay in their order whatever their timestamps say (the merge only
    ever compares the heads)."""
    streams: dict[tuple[str, int], list[tuple[int, Record]]] = {}
    for arrival, record in enumerate(records):
        streams.setdefault((record.topic, record.partition), []).append((arrival, record))
    merged = heapq.merge(*streams.values(), key=lambda item: (item[1].timestamp or 0, item[0]))
    return [record for _, record in merged]


def build(resources: Resources) -> ServiceHandlers:
    webhooks = Webhooks(resources)
    chores = Maintenance(resources.pool, keep=timedelta(days=resources.settings.webhooks_keep_days))
    return ServiceHandlers(SERVICE, {topic: webhooks.on_event for topic in TOPICS},
                           background=(webhooks.deliver_forever,
                                       lambda: every(AUDIT_POLL_SECONDS, chores.audit_changes,
                                                     "auditing webhook endpoint changes"),
                                       lambda: every(PRUNE_EVERY_SECONDS, chores.prune, "pruning webhook deliveries")),
                           batch_scope=webhooks.batch_scope, after_commit=webhooks.after_commit,
                           select=webhooks.select, gather=True)


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, build)
