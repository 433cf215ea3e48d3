"""Transactional outbox: events are committed with the state change, then relayed to Kafka.

A handler never publishes by itself. It writes outbox rows in its transaction; the relay
publishes a batch of them in one Kafka transaction (each model's in id order) and deletes them
once it committed. A crash between commit and publish loses nothing (the rows wait), and one
between publish and delete publishes twice, which consumers absorb through their
processed-event ids.

Why Kafka transactions: a pass sends all its rows at once, without waiting for one record's
acknowledgement before sending its model's next (that wait cost most of a version's time in
the relay), and still no consumer reading committed records (every service does) sees a
model's later event when an earlier one failed: the failed attempt is aborted as a whole. The
transactional id is the service's, so a new leader's producer fences a former one's.

A pass with at most one row per model and topic has no order to keep inside it (Kafka orders
a partition, not a model across topics: a model's event and its audit record are two chains),
and goes without a transaction (an idempotent producer): under a light load nearly every pass
is one, and a transaction per pass cost the brokers more than the records did. A former leader's idempotent
producer is not fenced: what it still sends late is a duplicate, absorbed like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from aiokafka.errors import UnknownTopicOrPartitionError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared import metrics, telemetry
from shared.db import AnyConnection, commit, connect, sql_literal
from shared.dead_letters import model_of
from shared.events import CONTENT_TYPE, CloudEvent, RegistryAudit, RegistryAuditData, new_event
from shared.outbox_policy import (
    check_serializable,
    disposition,
    first_failures,
    order_key,
    publish_backoff,
    resend_after_abort,
    send_chains,
)
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


def _insert_and_notify(service: str, channel: str, rows: str) -> str:
    """The insert of `rows` (a relation of topic, key, value, headers) into the outbox as
    `service`'s, and the NOTIFY that wakes the relay (it fires at commit, naming the service
    and its last row, so that a relay that has already sent that row need not look again)."""
    return f"""WITH written AS (
               INSERT INTO outbox (service, topic, key, value, headers)
               SELECT {service}, t.topic, t.key, t.value, t.headers
               FROM {rows} AS t(topic, key, value, headers)
               RETURNING id)
           SELECT pg_notify({channel}, {service} || ':' || max(id)) FROM written HAVING count(*) > 0"""


_WRITE = _insert_and_notify("$1", "$6", "unnest($2::text[], $3::text[], $4::bytea[], $5::jsonb[])")


async def write_outbox(conn: AnyConnection, service: str, rows: Sequence[OutboxRow]) -> None:
    """Insert rows, each signed by `service`, in one statement and wake the relay. Signed
    before they are stored: a row edited in the table is a forgery."""
    if not rows:
        return
    await conn.execute(
        _WRITE, service, [r.topic for r in rows], [r.key for r in rows], [sign_value(service, r.value) for r in rows],
        [r.headers for r in rows], NOTIFY_CHANNEL,
    )


async def write_outbox_and_commit(conn: AnyConnection, service: str, rows: Sequence[OutboxRow]) -> None:
    """`write_outbox`, then COMMIT, in one round trip: the rows go as literals in a statement
    of the simple query protocol (which takes several statements but no parameters). The
    insert and the commit were two of a small batch's eight or so round trips, each waiting
    on a busy machine's scheduler."""
    if not rows:
        await commit(conn)
        return
    values = ",\n".join(
        f"({sql_literal(r.topic)}, {sql_literal(r.key) if r.key is not None else 'NULL'}, "
        f"decode('{sign_value(service, r.value).hex()}', 'hex'), {sql_literal(json.dumps(r.headers))}::jsonb)"
        for r in rows)
    await commit(conn, _insert_and_notify(sql_literal(service), sql_literal(NOTIFY_CHANNEL), f"(VALUES {values})"))


class Publisher(Protocol):
    """Kafka transactions, as the relay uses them (`shared.runtime.OutboxProducer`)."""

    async def begin(self) -> None: ...

    async def send(self, topic: str, key: str | None, value: bytes, headers: dict[str, str]) -> asyncio.Future[Any]:
        """Queue a record in the open transaction; the future resolves when Kafka has it."""

    async def send_alone(self, topic: str, key: str | None, value: bytes,
                         headers: dict[str, str]) -> asyncio.Future[Any]:
        """Queue a record outside any transaction (an idempotent producer); the future
        resolves when Kafka has it, and then consumers read it."""

    async def commit(self) -> None: ...

    async def replace(self) -> None:
        """Fresh producers, the transactional one with the same transactional id: Kafka fences
        the old one and aborts what it left open. The relay ends a failed transaction so, never by aborting it: a
        failure can leave aiokafka's producer out of step with the brokers' sequence numbers
        for good (OutOfOrderSequenceNumber on every later send, aiokafka issue 1017). Raises,
        keeping the old one, while Kafka is away."""

    async def topic_exists(self, topic: str) -> bool | None:
        """Whether a fresh metadata fetch shows the Kafka topic exists (None: could not tell)."""


# Rows of a model that has a parked row wait behind it: its events leave in order or not at all.
_NEXT_ROWS = """
    SELECT o.id, o.topic, o.key, o.value, o.headers FROM outbox o
    WHERE o.service = $1
      AND (o.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM outbox_parked p
            WHERE p.service = o.service AND p.key = o.key AND p.topic = o.topic
              AND p.state = 'parked'))
    ORDER BY o.id LIMIT $2"""


@dataclass
class RelayPass:
    """What one pass of the relay did."""

    sent: int = 0
    parked: int = 0
    retry: int = 0  # rows a passing error kept back (they and their model's later rows on their topic wait)
    error: str | None = None  # the first such error
    full: bool = False  # it took as many rows as a pass may: more may be waiting

    @property
    def moved(self) -> int:
        return self.sent + self.parked


@dataclass(frozen=True)
class _Parked:
    reason: str
    error: str


# A row's fate in a pass: None (committed), parked, or the passing error that keeps it.
_Outcome = BaseException | _Parked | None


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


def _one_of(rows: dict[int, _Outcome]) -> Callable[[asyncpg.Record], bool]:
    return lambda row: row["id"] in rows


async def _settled(delivery: asyncio.Future[Any] | Exception) -> Exception | None:
    """None once Kafka has the record; else the error that kept it out."""
    if isinstance(delivery, Exception):
        return delivery
    try:
        await delivery
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
    return None


class OutboxRelay:
    """Publishes one service's outbox rows; one leader per service, chosen by advisory lock.

    A row Kafka refuses for good (shared/outbox_policy.py says which) is parked in
    `outbox_parked` with the reason, and holds back its model's later rows on its topic until
    ops retry or discard it (`modelreg outbox`); other rows keep flowing. A passing error (Kafka
    unreachable) keeps the row, and its model's later rows on that topic, for the next pass
    after a backoff.
    """

    def __init__(self, dsn: str, service: str, publisher: Publisher, topic_of: Callable[[str], str], *,
                 batch_size: int = 1000, poll_interval: float = 1.0, role: str | None = None) -> None:
        self._dsn = dsn
        self._role = role  # the service's own PostgreSQL role, as its pool acts
        self._service = service
        self._publisher = publisher
        self._topic_of = topic_of
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._failed_passes = 0
        self._backlog_counted_at = float("-inf")
        # Row ids of the last two passes: a NOTIFY naming one of them is about rows sent already.
        self._recent: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
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
            await self._publisher.replace()  # Kafka fences the producer of whoever led before
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            while True:
                done = await self.relay_once(conn)
                if done.retry:
                    await self._after_failed_pass(done)
                    continue
                self._failed_passes = 0
                if not done.moved:
                    await self._refresh_backlog(conn)
                if not done.full:  # else more is waiting; `_sleep` returns at once if woken meanwhile
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
        """A commit wrote rows of some service (`write_outbox`): look, unless they are this
        service's rows a pass has already taken (the local commit that wrote them woke it)."""
        service, _, last_row = str(payload).partition(":")
        if service != self._service:
            return
        if last_row.isdigit() and any(int(last_row) in ids for ids in self._recent):
            return
        self._wake.set()

    async def _sleep(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _after_failed_pass(self, done: RelayPass) -> None:
        """Back off, longer with each failed pass in a row."""
        self._failed_passes += 1
        delay = publish_backoff(self._failed_passes)
        metrics.OUTBOX_PUBLISH_RETRIES.labels(self._service).inc()
        log.warning("outbox of %s: %d event(s) not published (%s); retrying in %.1fs",
                    self._service, done.retry, done.error, delay)
        await asyncio.sleep(delay)

    async def relay_once(self, conn: asyncpg.Connection) -> RelayPass:
        """Publish one batch (in a Kafka transaction when a model has several rows on one topic
        in it), each model's rows on a topic in order; delete what was committed, park what Kafka refused for
        good, keep the rest for the next pass."""
        # Cleared before looking: a wake-up from here on means another look.
        self._wake.clear()
        rows = await conn.fetch(_NEXT_ROWS, self._service, self._batch_size)
        if not rows:
            return RelayPass()
        self._recent = (self._recent[1], frozenset(r["id"] for r in rows))
        outcomes = await self._publish_pass(send_chains(rows, _order_of))
        sent = [r for r in rows if r["id"] in outcomes and outcomes[r["id"]] is None]
        parked = {i: o for i, o in outcomes.items() if isinstance(o, _Parked)}
        # Nothing parked, the common case: the DELETE alone, one round trip instead of three.
        async with conn.transaction() if parked else contextlib.nullcontext():
            if parked:
                await conn.execute(
                    """INSERT INTO outbox_parked (id, service, topic, key, value, headers, error, reason)
                       SELECT id, service, topic, key, value, headers, e.error, e.reason
                       FROM outbox JOIN unnest($1::bigint[], $2::text[], $3::text[]) AS e(row_id, error, reason)
                            ON outbox.id = e.row_id""",
                    list(parked), [p.error for p in parked.values()], [p.reason for p in parked.values()])
            if sent or parked:
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
                      "later events on those topics wait: `modelreg outbox list` shows them, `modelreg outbox retry` "
                      "sends them again", self._service, len(parked), first.reason, first.error)
            metrics.OUTBOX_PARKED.labels(self._service).inc(len(parked))
        self.published += len(sent)
        for row in sent:
            metrics.EVENTS_EMITTED.labels(self._service, row["topic"]).inc()
        errors = [o for o in outcomes.values() if isinstance(o, BaseException)]
        return RelayPass(sent=len(sent), parked=len(parked), retry=len(errors),
                         error=f"{type(errors[0]).__name__}: {errors[0]}"[:500] if errors else None,
                         full=len(rows) >= self._batch_size)

    async def _publish_pass(self, chains: list[list[asyncpg.Record]]) -> dict[int, _Outcome]:
        """Each row's outcome: None once committed, else why not, for the first row of its
        model and topic that failed (its later rows there have none: they were not committed)."""
        if all(len(chain) == 1 for chain in chains):
            return await self._send_alone(chains)
        outcomes: dict[int, _Outcome] = {}
        while chains:
            failed = await self._attempt(chains)
            if not failed:
                outcomes.update((row["id"], None) for chain in chains for row in chain)
                return outcomes
            outcomes.update(failed)
            chains = resend_after_abort(chains, _one_of(failed))
        return outcomes

    async def _attempt(self, chains: list[list[asyncpg.Record]]) -> dict[int, _Outcome]:
        """Send `chains` in one transaction and commit it: nothing when it committed; else the
        failures, by row, of an attempt that was aborted (or whose commit failed)."""
        try:
            await self._publisher.begin()
        except Exception as exc:  # a producer a failure left in a transaction: the next pass, with a fresh one
            with contextlib.suppress(Exception):
                await self._abandon()
            return {chain[0]["id"]: await self._judge(chain[0], exc) for chain in chains}
        failed: dict[int, _Outcome] = {}
        for row, error in first_failures(await self._deliver(chains, alone=False), key_of=_order_of):
            failed[row["id"]] = await self._judge(row, error)
        try:
            if failed:
                await self._abandon()
            else:
                await self._publisher.commit()
        except Exception as exc:  # nothing of this attempt is known committed: all of it waits
            return failed | {chain[0]["id"]: await self._judge(chain[0], exc)
                             for chain in chains if not any(row["id"] in failed for row in chain)}
        return failed

    async def _send_alone(self, chains: list[list[asyncpg.Record]]) -> dict[int, _Outcome]:
        """A pass with no model's second row on a topic has no order to keep: each row goes on its own,
        without a transaction (a transaction costs the brokers three requests and a commit
        marker per partition more, and under a light load nearly every pass is like this).
        A row that fails waits, or is parked, alone."""
        delivered = await self._deliver(chains, alone=True)
        outcomes: dict[int, _Outcome] = {row["id"]: None if error is None else await self._judge(row, error)
                                          for row, error in delivered}
        if any(error is not None for _, error in delivered):
            with contextlib.suppress(Exception):  # Kafka away: the next pass fails, and backs off
                await self._abandon()
        return outcomes

    async def _deliver(self, chains: list[list[asyncpg.Record]], *,
                       alone: bool) -> list[tuple[asyncpg.Record, Exception | None]]:
        """Queue the rows one by one, in row order (a record's place in its partition is fixed
        when it is queued), then await them together: nothing waits for one acknowledgement
        to send the next. A row refused before it left ends its chain. Each row's error, or None."""
        sending: list[tuple[asyncpg.Record, Any, asyncio.Future[Any] | Exception]] = []
        for chain in chains:
            for row in chain:
                span = self._span(row)
                try:
                    sending.append((row, span, await self._queue(row, span, alone=alone)))
                except Exception as exc:  # refused before it left: its model's later rows stay
                    sending.append((row, span, exc))
                    break
        results = await asyncio.gather(*(_settled(delivery) for _, _, delivery in sending))
        for (_, span, _), result in zip(sending, results, strict=True):
            if span is not None:
                if result is not None:
                    span.record_exception(result)
                span.end()
        return [(row, result) for (row, _, _), result in zip(sending, results, strict=True)]

    async def _abandon(self) -> None:
        """After a failure, fresh producers (`Publisher.replace` says why)."""
        try:
            await self._publisher.replace()
        except Exception as exc:
            log.warning("outbox of %s: could not start a fresh Kafka producer (%s: %s)",
                        self._service, type(exc).__name__, exc)
            raise

    def _span(self, row: asyncpg.Record) -> Any:
        """A producer span where spans are recorded (otherwise the row's own trace context goes out)."""
        if not (telemetry.recording() and isinstance(row["headers"], dict)):
            return None
        return telemetry.tracer.start_span(
            f"{self._service} publish {row['topic']}", kind=SpanKind.PRODUCER,
            context=telemetry.parent_from(((k, str(v).encode()) for k, v in row["headers"].items())),
            attributes={"messaging.system": "kafka", "messaging.destination.name": row["topic"]})

    async def _queue(self, row: asyncpg.Record, span: Any, *, alone: bool) -> asyncio.Future[Any]:
        """Queue the row (in the open transaction, unless `alone`), with the producer span as
        the record's trace parent; the future resolves when Kafka has it."""
        headers = row["headers"]
        check_serializable(row["key"], row["value"], headers)
        if span is not None:
            headers = dict(headers)
            headers.pop("tracestate", None)
            with trace.use_span(span, end_on_exit=False):
                headers.update(telemetry.current_traceparent())
        send = self._publisher.send_alone if alone else self._publisher.send
        return await send(self._topic_of(row["topic"]), row["key"], row["value"], headers)

    async def _judge(self, row: asyncpg.Record, exc: BaseException) -> BaseException | _Parked:
        """Park the row (Kafka will refuse it until someone changes something) or keep it."""
        topic_missing = None
        if isinstance(exc, UnknownTopicOrPartitionError):
            exists = await self._publisher.topic_exists(self._topic_of(row["topic"]))
            topic_missing = None if exists is None else not exists
        decided = disposition(exc, topic_missing=topic_missing)
        if decided.park:
            return _Parked(reason=decided.reason or "refused", error=f"{type(exc).__name__}: {exc}"[:2000])
        return exc

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


def _order_of(row: asyncpg.Record) -> tuple[str, str] | None:
    return order_key(row["topic"], row["key"])
