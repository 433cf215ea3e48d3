"""Transactional outbox: events are committed with the state change, then relayed to Kafka.

A handler never publishes by itself. It writes outbox rows in its transaction; the relay
publishes them (each model's in id order) and deletes each once Kafka has acknowledged it. A crash
between commit and publish loses nothing (the rows wait), and one between publish and delete
publishes twice, which consumers absorb through their processed-event ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka.errors import UnknownTopicOrPartitionError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared import metrics, telemetry
from shared.db import AnyConnection, connect
from shared.dead_letters import model_of
from shared.events import CONTENT_TYPE, CloudEvent, RegistryAudit, RegistryAuditData, new_event
from shared.outbox_policy import check_serializable, disposition, publish_backoff, replace_producer, send_chains
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


async def write_outbox(conn: AnyConnection, service: str, rows: Sequence[OutboxRow]) -> None:
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
# Kafka topic -> whether a fresh metadata fetch shows it exists (None: could not tell).
TopicCheck = Callable[[str], Awaitable[bool | None]]

# Rows of a model that has a parked row wait behind it: its events leave in order or not at all.
_NEXT_ROWS = """
    SELECT o.id, o.topic, o.key, o.value, o.headers FROM outbox o
    WHERE o.service = $1
      AND (o.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM outbox_parked p
            WHERE p.service = o.service AND p.key = o.key AND p.state = 'parked'))
    ORDER BY o.id LIMIT $2"""


@dataclass
class RelayPass:
    """What one pass of the relay did."""

    sent: int = 0
    parked: int = 0
    retry: int = 0  # rows a passing error kept back (they and their model's later rows wait)
    error: str | None = None  # the first such error

    @property
    def moved(self) -> int:
        return self.sent + self.parked


@dataclass(frozen=True)
class _Parked:
    reason: str
    error: str


PARKED_ACTION = "outbox_parked"


def parked_audit(service: str, row_id: int, topic: str, key: str | None, value: bytes, reason: str,
                 error: str) -> OutboxRow | None:
    """The `outbox_parked` audit record of a row the relay parked (None for a registry.audit
    row: its record would go the same refused way, and park again for ever).

    Sent without a key: keyed by its model it would wait behind the very row it reports."""
    if topic == RegistryAudit.topic:
        return None
    try:
        parked = json.loads(value)
        data = parked.get("data") if isinstance(parked, dict) else None
    except ValueError:  # unreadable is also a reason to park: the record says so
        parked, data = None, None
    version = data.get("version") if isinstance(data, dict) else None
    event_id = parked.get("id") if isinstance(parked, dict) else None
    correlation = _uuid(parked.get("correlationid")) if isinstance(parked, dict) else None
    source = f"modelreg/{service}"
    audit = new_event(RegistryAudit, RegistryAuditData(
        action=PARKED_ACTION, name=model_of(key),
        version=version if isinstance(version, int) and not isinstance(version, bool) and version > 0 else None,
        actor=source, reason=f"{reason}: {error}"[:10_000],
        evidence={"topic": topic, "reason": reason, "outbox_id": row_id,
                  "event_id": event_id if isinstance(event_id, str) else None},
    ), source=source, correlationid=correlation)
    return OutboxRow(topic=audit.topic, key=None, value=audit.to_json(), headers={"content-type": CONTENT_TYPE})


def _uuid(text: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text)) if text else None
    except ValueError:
        return None


class OutboxRelay:
    """Publishes one service's outbox rows; one leader per service, chosen by advisory lock.

    A row Kafka refuses for good (shared/outbox_policy.py says which) is parked in
    `outbox_parked` with the reason, and holds back its model's later rows until ops retry or
    discard it (`modelreg outbox`); other models' rows keep flowing. A passing error (Kafka
    unreachable) keeps the row, and its model's later rows, for the next pass after a backoff.
    """

    def __init__(self, dsn: str, service: str, send: Sender, topic_of: Callable[[str], str], *,
                 batch_size: int = 1000, poll_interval: float = 1.0,
                 topic_exists: TopicCheck | None = None, role: str | None = None,
                 replace_sender: Callable[[], Awaitable[None]] | None = None) -> None:
        self._dsn = dsn
        self._role = role  # the service's own PostgreSQL role, as its pool acts
        self._service = service
        self._send = send
        self._topic_of = topic_of
        self._topic_exists = topic_exists
        self._replace_sender = replace_sender  # a fresh producer behind `send`, after failures in a row
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._failed_passes = 0
        self._backlog_counted_at = float("-inf")
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
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay for %s lost its connection (%s); retrying in %.1fs",
                            self._service, exc, backoff)
            except Exception:
                log.exception("outbox relay for %s failed; retrying in %.1fs", self._service, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _lead(self) -> None:
        conn = await connect(self._dsn, role=self._role)
        try:
            lock_key = await conn.fetchval("SELECT hashtextextended($1, 0)", f"outbox:{self._service}")
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                await asyncio.sleep(self._poll_interval)  # another instance is the leader
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            while True:
                done = await self.relay_once(conn)
                if done.retry:
                    await self._after_failed_pass(done)
                    continue
                self._failed_passes = 0
                if not done.moved:
                    await self._refresh_backlog(conn)
                    await self._sleep()
        finally:
            await conn.close()

    async def _refresh_backlog(self, conn: asyncpg.Connection) -> None:
        """The backlog gauges once the outbox is drained, at most once a poll interval: under
        load the relay drains after every batch a service commits, and counting the outbox
        each time was a statement per batch that only a scrape (which counts too) reads."""
        now = asyncio.get_running_loop().time()
        if now - self._backlog_counted_at >= self._poll_interval:
            self._backlog_counted_at = now
            await self.backlog(conn)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == self._service:
            self._wake.set()

    async def _sleep(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _after_failed_pass(self, done: RelayPass) -> None:
        """Back off; every few failed passes in a row, get a fresh producer first."""
        self._failed_passes += 1
        delay = publish_backoff(self._failed_passes)
        metrics.OUTBOX_PUBLISH_RETRIES.labels(self._service).inc()
        log.warning("outbox of %s: %d event(s) not published (%s); retrying in %.1fs",
                    self._service, done.retry, done.error, delay)
        if self._replace_sender is not None and replace_producer(self._failed_passes):
            try:
                await self._replace_sender()
                log.warning("outbox of %s: replaced its Kafka producer after %d failed passes",
                            self._service, self._failed_passes)
            except Exception as exc:  # Kafka still away: the old producer stays, the next round tries again
                log.warning("outbox of %s: could not start a fresh Kafka producer (%s: %s)",
                            self._service, type(exc).__name__, exc)
        await asyncio.sleep(delay)

    async def relay_once(self, conn: asyncpg.Connection) -> RelayPass:
        """Publish one batch: each model's rows in order, the models concurrently; delete what
        Kafka acknowledged, park what it refused for good, keep the rest for the next pass."""
        rows = await conn.fetch(_NEXT_ROWS, self._service, self._batch_size)
        if not rows:
            return RelayPass()
        # Clear before publishing: a wake-up that arrives meanwhile means another look.
        self._wake.clear()
        outcomes: dict[int, BaseException | _Parked | None] = {}
        await asyncio.gather(*(self._send_chain(chain, outcomes)
                               for chain in send_chains(rows, lambda r: r["key"])))
        sent = [r for r in rows if r["id"] in outcomes and outcomes[r["id"]] is None]
        parked = {i: o for i, o in outcomes.items() if isinstance(o, _Parked)}
        async with conn.transaction():
            if parked:
                await conn.execute(
                    """INSERT INTO outbox_parked (id, service, topic, key, value, headers, error, reason)
                       SELECT id, service, topic, key, value, headers, e.error, e.reason
                       FROM outbox JOIN unnest($1::bigint[], $2::text[], $3::text[]) AS e(row_id, error, reason)
                            ON outbox.id = e.row_id""",
                    list(parked), [p.error for p in parked.values()], [p.reason for p in parked.values()])
            await conn.execute("DELETE FROM outbox WHERE service = $1 AND id = ANY($2::bigint[])",
                               self._service, [r["id"] for r in sent] + list(parked))
            by_id = {r["id"]: r for r in rows}
            audits = [parked_audit(self._service, i, by_id[i]["topic"], by_id[i]["key"], bytes(by_id[i]["value"]),
                                   park.reason, park.error) for i, park in parked.items()]
            await write_outbox(conn, self._service, [a for a in audits if a is not None])
        for park in parked.values():
            metrics.OUTBOX_PARKED_TOTAL.labels(self._service, park.reason).inc()
        if parked:
            first = next(iter(parked.values()))
            log.error("outbox of %s: parked %d event(s) Kafka refused for good (%s: %s); their models' "
                      "later events wait: `modelreg outbox list` shows them, `modelreg outbox retry` "
                      "sends them again", self._service, len(parked), first.reason, first.error)
            metrics.OUTBOX_PARKED.labels(self._service).inc(len(parked))
        self.published += len(sent)
        for row in sent:
            metrics.EVENTS_EMITTED.labels(self._service, row["topic"]).inc()
        errors = [o for o in outcomes.values() if isinstance(o, BaseException)]
        return RelayPass(sent=len(sent), parked=len(parked), retry=len(errors),
                         error=f"{type(errors[0]).__name__}: {errors[0]}"[:500] if errors else None)

    async def _send_chain(self, chain: list[asyncpg.Record],
                          outcomes: dict[int, BaseException | _Parked | None]) -> None:
        """One model's rows, one at a time; the first that fails stops the chain (the rest are
        not attempted, so nothing of this model overtakes it)."""
        for row in chain:
            outcome = await self._publish_traced(row)
            outcomes[row["id"]] = outcome
            if outcome is not None:
                return

    async def _publish_traced(self, row: asyncpg.Record) -> BaseException | _Parked | None:
        """None once Kafka acknowledged the row; else why not (parked, or an error to retry)."""
        # A producer span, where spans are recorded; otherwise the row's own trace context goes out.
        span = telemetry.tracer.start_span(
            f"{self._service} publish {row['topic']}", kind=SpanKind.PRODUCER,
            context=telemetry.parent_from(((k, str(v).encode()) for k, v in row["headers"].items())),
            attributes={"messaging.system": "kafka", "messaging.destination.name": row["topic"]}) \
            if telemetry.recording() and isinstance(row["headers"], dict) else None
        try:
            await self._publish(row, span)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
            topic_missing = None
            if isinstance(exc, UnknownTopicOrPartitionError) and self._topic_exists is not None:
                exists = await self._topic_exists(self._topic_of(row["topic"]))
                topic_missing = None if exists is None else not exists
            decided = disposition(exc, topic_missing=topic_missing)
            if decided.park:
                return _Parked(reason=decided.reason or "refused", error=f"{type(exc).__name__}: {exc}"[:2000])
            return exc
        finally:
            if span is not None:
                span.end()

    async def _publish(self, row: asyncpg.Record, span: Any) -> Any:
        """Send with the producer span as the record's trace parent."""
        headers = row["headers"]
        check_serializable(row["key"], row["value"], headers)
        if span is not None:
            headers = dict(headers)
            headers.pop("tracestate", None)
            with trace.use_span(span, end_on_exit=False):
                headers.update(telemetry.current_traceparent())
        future = await self._send(self._topic_of(row["topic"]), row["key"], row["value"], headers)
        return await future

    async def backlog(self, conn: AnyConnection) -> int:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM outbox WHERE service = $1),
                      (SELECT count(*) FROM outbox_parked WHERE service = $1 AND state = 'parked')""",
            self._service)
        assert row is not None  # a SELECT without FROM returns one row
        count, parked = int(row[0]), int(row[1])
        metrics.OUTBOX_BACKLOG.labels(self._service).set(count)
        metrics.OUTBOX_PARKED.labels(self._service).set(parked)
        return count
