"""Transactional outbox: events are committed with the state change, then relayed to Kafka.

A handler never publishes by itself. It writes outbox rows in its transaction; the relay
publishes them in id order and deletes them once Kafka has acknowledged every one. A crash
between commit and publish loses nothing (the rows wait), and one between publish and delete
publishes twice, which consumers absorb through their processed-event ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared import metrics, telemetry
from shared.db import connect
from shared.events import CONTENT_TYPE, CloudEvent
from shared.signing import sign_value

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "modelreg_outbox"


@dataclass(frozen=True)
class OutboxRow:
    topic: str
    key: str | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, event: CloudEvent[Any], *, key: str | None = None,
           headers: dict[str, str] | None = None) -> OutboxRow:
        """Keyed by model name (the subject), so one model's events stay in order."""
        return cls(topic=event.topic, key=event.subject or key, value=event.to_json(),
                   headers={"content-type": CONTENT_TYPE, **(headers or {})})


async def write_outbox(conn: asyncpg.Connection, service: str, rows: Sequence[OutboxRow]) -> None:
    """Insert rows, each signed by `service`, in one statement and wake the relay (NOTIFY
    fires at commit). Signed before they are stored: a row edited in the table is a forgery."""
    if not rows:
        return
    await conn.execute(
        """WITH written AS (
               INSERT INTO outbox (service, topic, key, value, headers)
               SELECT $1, t.topic, t.key, t.value, t.headers
               FROM unnest($2::text[], $3::text[], $4::bytea[], $5::jsonb[]) AS t(topic, key, value, headers)
               RETURNING 1)
           SELECT pg_notify($6, $1) FROM (SELECT 1 FROM written LIMIT 1) AS any_row""",
        service, [r.topic for r in rows], [r.key for r in rows], [sign_value(service, r.value) for r in rows],
        [r.headers for r in rows], NOTIFY_CHANNEL,
    )


# (topic, key, value, headers) -> a future resolved when Kafka acknowledged the record.
Sender = Callable[[str, str | None, bytes, dict[str, str]], Awaitable[asyncio.Future[Any]]]


class OutboxRelay:
    """Publishes one service's outbox rows; one leader per service, chosen by advisory lock."""

    def __init__(self, dsn: str, service: str, send: Sender, topic_of: Callable[[str], str], *,
                 batch_size: int = 1000, poll_interval: float = 1.0) -> None:
        self._dsn = dsn
        self._service = service
        self._send = send
        self._topic_of = topic_of
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        """Called after a local commit, so the relay need not wait for NOTIFY or the poll."""
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
                log.warning("outbox relay for %s lost its connection (%s); retrying in %.1fs",
                            self._service, exc, backoff)
            except Exception:
                log.exception("outbox relay for %s failed; retrying in %.1fs", self._service, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _lead(self) -> None:
        conn = await connect(self._dsn)
        try:
            lock_key = await conn.fetchval("SELECT hashtextextended($1, 0)", f"outbox:{self._service}")
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                await asyncio.sleep(self._poll_interval)  # another instance is the leader
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            while True:
                if not await self.relay_once(conn):
                    await self.backlog(conn)
                    await self._sleep()
        finally:
            await conn.close()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self._service:
            self._wake.set()

    async def _sleep(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        except TimeoutError:
            pass
        self._wake.clear()

    async def relay_once(self, conn: asyncpg.Connection) -> int:
        """Publish one batch; returns how many rows went out."""
        rows = await conn.fetch(
            "SELECT id, topic, key, value, headers FROM outbox WHERE service = $1 ORDER BY id LIMIT $2",
            self._service, self._batch_size)
        if not rows:
            return 0
        # Clear before publishing: a wake-up that arrives meanwhile means another look.
        self._wake.clear()
        # Producer spans, where spans are recorded; otherwise the rows' own trace context goes out.
        spans = [telemetry.tracer.start_span(
            f"{self._service} publish {r['topic']}", kind=SpanKind.PRODUCER,
            context=telemetry.parent_from(((k, v.encode()) for k, v in r["headers"].items())),
            attributes={"messaging.system": "kafka", "messaging.destination.name": r["topic"]})
            if telemetry.recording() else None for r in rows]
        outcomes = await asyncio.gather(*(self._publish(r, s) for r, s in zip(rows, spans, strict=True)),
                                        return_exceptions=True)
        for span, outcome in zip(spans, outcomes, strict=True):
            if span is None:
                continue
            if isinstance(outcome, BaseException):
                span.record_exception(outcome)
            span.end()
        refused = {}
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not _refused_for_good(outcome):
                    raise outcome  # retry the batch; what went out is deduplicated downstream
                refused[row["id"]] = f"{type(outcome).__name__}: {outcome}"
        async with conn.transaction():
            if refused:
                log.error("outbox of %s: parking %d event(s) Kafka refused: %s", self._service,
                          len(refused), next(iter(refused.values())))
                await conn.execute(
                    """INSERT INTO outbox_parked (id, service, topic, key, value, headers, error)
                       SELECT id, service, topic, key, value, headers, e.error
                       FROM outbox JOIN unnest($1::bigint[], $2::text[]) AS e(row_id, error)
                            ON outbox.id = e.row_id""",
                    list(refused), list(refused.values()))
            await conn.execute("DELETE FROM outbox WHERE service = $1 AND id = ANY($2::bigint[])",
                               self._service, [r["id"] for r in rows])
        self.published += len(rows) - len(refused)
        for row in rows:
            if row["id"] not in refused:
                metrics.EVENTS_EMITTED.labels(self._service, row["topic"]).inc()
        return len(rows)

    async def _publish(self, row: asyncpg.Record, span: Any) -> Any:
        """Send with the producer span as the record's trace parent."""
        headers = row["headers"]
        if span is not None:
            headers = dict(headers)
            headers.pop("tracestate", None)
            with trace.use_span(span, end_on_exit=False):
                headers.update(telemetry.current_traceparent())
        future = await self._send(self._topic_of(row["topic"]), row["key"], row["value"], headers)
        return await future

    async def backlog(self, conn: asyncpg.Connection) -> int:
        count = await conn.fetchval("SELECT count(*) FROM outbox WHERE service = $1", self._service)
        metrics.OUTBOX_BACKLOG.labels(self._service).set(count)
        return count


def _refused_for_good(exc: BaseException) -> bool:
    """Kafka will never take this record (as opposed to being unreachable for now)."""
    return isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError, InvalidTopicError,
                            UnsupportedForMessageFormatError))
