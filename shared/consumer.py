"""At-least-once batch processing: one transaction per batch, idempotent, poison to the DLQ.

For each batch of Kafka records a service receives:

1. every record is parsed; what cannot be an event of its topic becomes a dead letter;
2. events this consumer already applied (processed_events) are skipped;
3. the service may do I/O for the new events outside the transaction (`prepare`), keeping
   what it learned in the call's `Batch`;
4. one transaction records the processed ids, runs each event's handler (with that `Batch`
   on its `Tx`) and writes everything emitted (events, audit records, dead letters) to the
   outbox;
5. only then does the caller commit the Kafka offsets.

No network call runs inside the transaction. A handler that finds, while deciding, that it
needs I/O `prepare` could not foresee (promotion's integrity check of the version it is about
to crown) raises `NeedsIO`: the transaction is rolled back, the I/O runs outside it, and the
batch is applied again with its result in the `Batch`.

A handler raising `InvalidEvent` dead-letters its event and keeps the rest of the batch.
Retryable faults (database or S3 unreachable) retry the whole batch with backoff, forever:
the offsets are not committed, so nothing is lost and order is kept. Any other exception is
retried a few times, then the batch is replayed one event at a time so that only the event
that keeps failing is dead-lettered and the service keeps consuming.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from opentelemetry.trace import SpanKind

from shared import logs, metrics, telemetry
from shared.db import roll_back, sql_literal
from shared.events import (
    MODEL_NAME_PATTERN,
    TYPED_EVIDENCE,
    UNKNOWN_MODEL,
    AuditEvidence,
    CloudEvent,
    D,
    DlqError,
    InvalidEvent,
    RegistryAudit,
    RegistryAuditData,
    RegistryDlq,
    RegistryDlqData,
    Stage,
    new_event,
    parse_event,
)
from shared.keys import Keyring
from shared.outbox import OutboxRow, write_outbox, write_outbox_and_commit
from shared.signing import check as check_signature
from shared.storage import is_retryable as s3_retryable

log = logging.getLogger(__name__)

_DEAD_LETTER_IDS = uuid.UUID("8a1c5f4e-2f59-4b8e-9d9c-6d0c3a6f1e21")
_NAME = re.compile(MODEL_NAME_PATTERN)
UNEXPECTED_FAULT_ATTEMPTS = 3


@dataclass(frozen=True)
class Record:
    """One Kafka record as the consumer saw it (topic is the contract name, unprefixed)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int | None = None  # milliseconds, as the producer stamped it (Kafka's CreateTime)

    @property
    def key_text(self) -> str | None:
        """The key as text PostgreSQL can store: None when it is not UTF-8, and a NUL (which no
        text column holds, and which made a dead letter's own insert fail, its partition
        redelivered forever) as U+FFFD."""
        try:
            return storable(self.key.decode()) if self.key is not None else None
        except UnicodeDecodeError:
            return None

    @property
    def dead_letter_id(self) -> uuid.UUID:
        """Stable per message, so a redelivered poison message is dead-lettered once."""
        return uuid.uuid5(_DEAD_LETTER_IDS, f"{self.topic}/{self.partition}/{self.offset}")


@dataclass
class Batch:
    """One application of a batch, from `prepare` to after its commit: what was learned
    outside the transaction (`facts`, keyed as the service likes: an event id, a version),
    and what the service's `batch_scope` yielded (`scope`: e.g. the batch's models, loaded
    once). A new one per application, so that a service object keeps no per-batch state and
    nothing learned for one batch is believed in the next."""

    facts: dict[Any, Any] = field(default_factory=dict)
    scope: Any = None
    # Run once the transaction commits (a decision's metric: a batch redone counts once).
    committed: list[Callable[[], None]] = field(default_factory=list)


class NeedsIO(Exception):  # noqa: N818 - a request, not an error
    """Raised by a handler inside the transaction: run `fetch(batch)` outside it, then apply
    the batch again (the handler finds the result in `batch.facts` the second time)."""

    def __init__(self, fetch: Callable[[Batch], Awaitable[None]], why: str) -> None:
        super().__init__(why)
        self.fetch = fetch


# Each round must bring facts the batch did not have (else it is a bug, refused at once), so
# rounds end; this bounds a batch that keeps finding more to fetch (one version at a time).
MAX_IO_ROUNDS = 64


@dataclass
class Delivery:
    record: Record
    event: CloudEvent[Any] | None = None
    error: InvalidEvent | None = None
    trace_parent: Any = None  # the trace this event continues (or starts), once known
    sender: str | None = None  # who sent it, as far as signatures and ACLs tell (not its `source`)


class Tx:
    """What a handler may do: SQL on `conn`, and emit events and audit records.

    Events emitted while handling `cause` continue its version's life (same correlation id,
    caused by it). Work no event caused (a periodic sweep) passes the version's correlation.
    """

    def __init__(self, conn: asyncpg.Connection, service: str, cause: CloudEvent[Any] | None,
                 correlation: uuid.UUID | None = None, record: Record | None = None,
                 sender: str | None = None, batch: Batch | None = None) -> None:
        self.conn = conn
        self.service = service
        self.cause = cause
        self.correlation = correlation
        self.record = record  # the Kafka record `cause` came in, where there is one
        self.sender = sender  # who sent `cause`: a verified key, or the ACL role of its topic
        self.batch = batch if batch is not None else Batch()
        self.rows: list[OutboxRow] = []

    def caused_by(self, event: CloudEvent[Any], record: Record) -> Tx:
        """The same transaction and batch, handling another event (one replayed inside this
        one): what it emits lands in this Tx's rows."""
        return self._sharing(Tx(self.conn, self.service, event, record=record, batch=self.batch))

    def about(self, correlation: uuid.UUID | None) -> Tx:
        """The same transaction, emitting about another version's life (a sweep's next one)."""
        return self._sharing(Tx(self.conn, self.service, None, correlation=correlation, batch=self.batch))

    def _sharing(self, inner: Tx) -> Tx:
        inner.rows = self.rows  # one outbox write for the whole transaction
        return inner

    @property
    def source(self) -> str:
        return f"modelreg/{self.service}"

    def emit(self, envelope: type[CloudEvent[D]], data: D, *,
             correlation: uuid.UUID | None = None) -> CloudEvent[D]:
        """`correlation` names the life of the version the event is about, where that is not
        the cause's (a QA result for v2 that restores v1 continues v1's life)."""
        correlation = correlation or (self.cause.correlation if self.cause is not None else self.correlation)
        causation = self.cause.id if self.cause is not None else None
        event = new_event(envelope, data, source=self.source, correlationid=correlation,
                          causationid=causation)
        self.rows.append(OutboxRow.of(event, headers=telemetry.current_traceparent()))
        return event

    def audit(self, action: str, *, name: str, version: int | None = None,
              from_stage: Stage | None = None, to_stage: Stage | None = None,
              actor: str | None = None, reason: str | None = None,
              evidence: AuditEvidence | dict[str, Any] | None = None,
              correlation: uuid.UUID | None = None) -> CloudEvent[RegistryAuditData]:
        """An audit record. The actions the read model is built from take their typed
        evidence (shared.events.TYPED_EVIDENCE); other actions' evidence is free-form."""
        typed = TYPED_EVIDENCE.get(action)
        if typed is not None and not isinstance(evidence, typed):
            raise TypeError(f"an {action!r} audit record takes {typed.__name__} evidence, "
                            f"not {type(evidence).__name__}")
        if isinstance(evidence, AuditEvidence):
            if evidence.ACTION != action:
                raise TypeError(f"{type(evidence).__name__} is evidence for {evidence.ACTION!r}, not {action!r}")
            evidence = evidence.as_dict()
        evidence = evidence or {}
        if self.sender is not None:  # the audit says who really sent what caused this
            evidence = {**evidence, "sent_by": self.sender}
        data = RegistryAuditData(action=action, name=name, version=version, from_stage=from_stage,
                                 to_stage=to_stage, actor=actor or self.source, reason=reason,
                                 evidence=evidence)
        return self.emit(RegistryAudit, data, correlation=correlation)


def storable(text: str) -> str:
    """`text` with each NUL, which PostgreSQL's text and jsonb refuse, as U+FFFD."""
    return text.replace("\x00", "\ufffd")


def _event_id(delivery: Delivery) -> uuid.UUID:
    """What a delivery is known by in processed_events: its event's id, else its record's."""
    return delivery.event.id if delivery.event is not None else delivery.record.dead_letter_id


def _unique(deliveries: list[Delivery]) -> list[Delivery]:
    """Each event once (a producer's retry can put one twice in a batch), the first kept."""
    seen: set[uuid.UUID] = set()
    unique = []
    for delivery in deliveries:
        if (event_id := _event_id(delivery)) not in seen:
            seen.add(event_id)
            unique.append(delivery)
    return unique


async def begin_claiming(conn: asyncpg.Connection, consumer: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Open the batch's transaction and record its event ids as processed by `consumer`: the
    ids this took, i.e. those not applied before (a duplicate within `ids` is taken once).

    BEGIN and the insert go in one round trip (the simple query protocol, which carries
    several statements but no parameters, hence the literals: a consumer's name, and UUIDs,
    which print as hex and hyphens). A round trip was a tenth of a small batch's statements,
    each waiting on a busy machine's scheduler. The insert's row count says whether every id
    was new, as it nearly always is; when not (a redelivery), the transaction starts over with
    the insert that returns what it took."""
    wanted = set(ids)
    if wanted:
        listed = ",".join(str(uuid.UUID(str(i))) for i in wanted)  # UUIDs only, whatever they came as
        status = await conn.execute(
            f"""BEGIN; INSERT INTO processed_events (consumer, event_id)
                SELECT {sql_literal(consumer)}, unnest('{{{listed}}}'::uuid[]) ON CONFLICT DO NOTHING""")
        if int(status.rsplit(" ", 1)[-1]) == len(wanted):
            return wanted
        await conn.execute("ROLLBACK")
    await conn.execute("BEGIN")
    return {r[0] for r in await conn.fetch(
        """INSERT INTO processed_events (consumer, event_id)
           SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id""", consumer, list(wanted))}


@contextlib.asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, service: str) -> AsyncIterator[Tx]:
    """Work no record caused (a sweep, an expiry, a move finished): one transaction, whose
    emitted events and audit records reach the outbox in it, as a batch's do. (What it emits
    names its version's life with `correlation=`, or through `Tx.about`.)"""
    async with pool.acquire() as lent, lent.transaction():
        conn = cast(asyncpg.Connection, lent)  # the pool's proxy forwards every Connection method
        tx = Tx(conn, service, None)
        yield tx
        await write_outbox(conn, service, tx.rows)


# The event a handler gets is its topic's catalogue type (parse_event): a handler declares that
# subclass (ModelIngested, ...), which a dict keyed by topic cannot express, hence Any.
Handler = Callable[[Tx, Any], Awaitable[None]]
# Set-based handling of all of a batch's fresh events of one topic, inside the transaction;
# for handlers that emit nothing and refuse nothing (the audit writer).
BatchHandler = Callable[[asyncpg.Connection, list[CloudEvent[Any]]], Awaitable[None]]
# I/O for a batch's fresh events before the transaction, its findings kept in the Batch;
# gets each event's trace parent.
Prepare = Callable[[Batch, Sequence[CloudEvent[Any]], "TraceParents"], Awaitable[None]]
TraceParents = dict[uuid.UUID, Any]
# Where a record carries no trace context: the traceparent the service remembers for it.
TraceFallback = Callable[[Batch, CloudEvent[Any]], Awaitable[str | None]]
# Wraps a batch's handlers inside its transaction; what it yields becomes `Batch.scope`.
BatchScope = Callable[[asyncpg.Connection, list[CloudEvent[Any]]], AbstractAsyncContextManager[Any]]


@dataclass
class ServiceHandlers:
    """A service as the consumer sees it: its name, a handler per topic, optional I/O step.

    Per batch, in this order: `prepare` (I/O, outside the transaction) -> `batch_scope`
    (inside it: load what the batch decides about) -> the handlers (decide and record) ->
    commit -> `after_commit`. Everything one batch knows lives in its `Batch`."""

    name: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    prepare: Prepare | None = None
    retryable: Callable[[BaseException], bool] = field(default=lambda exc: False)
    batch_handlers: dict[str, BatchHandler] = field(default_factory=dict)
    # Long-running tasks beside consumption (e.g. archival's periodic sweep).
    background: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = ()
    trace_fallback: TraceFallback | None = None
    # Called once a batch's transaction has committed (clean-up that must not run earlier).
    after_commit: Callable[[Batch], Awaitable[None]] | None = None
    # Wraps the batch's handlers inside its transaction (a service that reads and writes its
    # tables set-based per batch). Such handlers must not refuse events: they cannot be undone
    # one at a time.
    batch_scope: BatchScope | None = None
    # Before anything else, the records of a batch this service has something to do with, for
    # one whose interest changes at run time (webhooks: the topics its active endpoints
    # subscribe to). The rest are passed over unread, outside any transaction, and their
    # offsets are committed with the batch's.
    select: Callable[[Sequence[Record]], Awaitable[Sequence[Record]]] | None = None
    # Let the broker hold each fetch up to half a second to fill it: fewer, fuller batches for
    # a consumer no one waits on record by record (webhooks, archival), instead of one per record.
    gather: bool = False

    @property
    def topics(self) -> tuple[str, ...]:
        return (*self.handlers, *self.batch_handlers)


_NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
                             errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.ETIMEDOUT, errno.EADDRNOTAVAIL})


def is_retryable(exc: BaseException) -> bool:
    """Infrastructure faults: wait them out rather than dead-letter anything. A file that
    cannot be read is not one (it will not be readable next time either). Concurrent work (a
    TaskGroup of artifact copies) fails with a group: retryable when every fault in it is."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_retryable(inner) for inner in exc.exceptions)
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    # A server shutting down or restarting, or out of disk or connections, will be back (a
    # query cancelled by a timeout is not infrastructure: it would time out again).
    return isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                            asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
                            asyncpg.CannotConnectNowError, asyncpg.exceptions.InsufficientResourcesError,
                            asyncpg.DeadlockDetectedError, asyncpg.SerializationError)) or s3_retryable(exc)


class BatchProcessor:
    def __init__(self, pool: asyncpg.Pool, service: ServiceHandlers, *,
                 keyring: Keyring | None = None,
                 on_commit: Callable[[], None] = lambda: None,
                 max_backoff: float = 5.0) -> None:
        self._pool = pool
        self._service = service
        # Events on internal topics are believed only when signed by a key of the keyring
        # that may sign their type (ServiceApp always passes one; None checks nothing).
        self._keyring = keyring
        self._on_commit = on_commit
        self._max_backoff = max_backoff
        self.consumed = 0
        self.dead_lettered = 0
        self.busy = False  # a batch is being applied
        self._applied_before: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset

    @property
    def consumer(self) -> str:
        return self._service.name

    def decode(self, record: Record) -> Delivery:
        """Never raises: a record that cannot become an event, for whatever reason (a bug in
        a validator included), is a dead letter, not a reason to stop the partition."""
        try:
            event = parse_event(record.topic, record.value)
            sender = None
            if self._keyring is not None:
                problem, sender = check_signature(self._keyring, record.topic, record.value)
                if problem is not None:
                    raise InvalidEvent("forged", problem)
            return Delivery(record, event=event, sender=sender)
        except InvalidEvent as exc:
            return Delivery(record, error=exc)
        except Exception as exc:  # noqa: BLE001 - see above
            log.exception("%s: could not decode %s[%d]@%d", self.consumer, record.topic,
                          record.partition, record.offset)
            return Delivery(record, error=InvalidEvent("undecodable", f"{type(exc).__name__}: {exc}"[:1000]))

    async def process(self, records: Sequence[Record]) -> None:
        """Apply a batch; returns once it is committed (then offsets may be committed)."""
        started = time.perf_counter()
        self.busy = True
        try:
            wanted = records if self._service.select is None else await self._select(records)
            self.consumed += len(records) - len(wanted)
            # The whole batch in one transaction, in arrival order. Applying each partition in
            # a transaction of its own, concurrently, cost the same CPU and tripled the
            # pipeline's latency at 50 versions/s (p99 1.8 s against 0.63 s, `modelreg bench`;
            # a bigger pool changed nothing): every batch then waited for its slowest partition,
            # and paid a commit and an outbox relay wake-up per partition.
            if wanted:
                await self._process(wanted)
        finally:
            self.busy = False
        for record in records:
            metrics.EVENTS_CONSUMED.labels(self.consumer, record.topic).inc()
        metrics.BATCH_SECONDS.labels(self.consumer).observe(time.perf_counter() - started)

    async def _select(self, records: Sequence[Record]) -> Sequence[Record]:
        """The service's `select`; every record when it fails (the batch's own retries then
        wait out a database that is down)."""
        assert self._service.select is not None
        try:
            return await self._service.select(records)
        except Exception as exc:  # noqa: BLE001 - passing nothing over is always safe
            log.warning("%s: choosing the records to apply failed (%s: %s); applying all of them",
                        self.consumer, type(exc).__name__, exc)
            return records

    async def _process(self, records: Sequence[Record]) -> None:
        deliveries = [self.decode(r) for r in records]
        backoff, failures = 0.1, 0
        while True:
            try:
                await self._apply(deliveries)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._retryable(exc):
                    metrics.RETRIES.labels(self.consumer, "infrastructure").inc()
                    log.warning("%s: infrastructure fault (%s: %s); retrying in %.1fs",
                                self.consumer, type(exc).__name__, exc, backoff)
                else:
                    metrics.RETRIES.labels(self.consumer, "unexpected").inc()
                    failures += 1
                    log.exception("%s: unexpected fault in a batch of %d (attempt %d)",
                                  self.consumer, len(deliveries), failures)
                    if failures >= UNEXPECTED_FAULT_ATTEMPTS:
                        await self._isolate(deliveries)
                        break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
        self.consumed += len(records)

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, BaseExceptionGroup):
            return all(self._retryable(inner) for inner in exc.exceptions)
        return is_retryable(exc) or self._service.retryable(exc)

    async def _isolate(self, deliveries: list[Delivery]) -> None:
        """One event at a time: only the one that keeps failing is dead-lettered."""
        for delivery in deliveries:
            backoff, failures = 0.1, 0
            while True:
                try:
                    await self._apply([delivery])
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not self._retryable(exc):
                        failures += 1
                        if failures >= UNEXPECTED_FAULT_ATTEMPTS:
                            log.error("%s: %s[%d]@%d failed %d times; dead-lettering it as handler_error",
                                      self.consumer, delivery.record.topic, delivery.record.partition,
                                      delivery.record.offset, failures, exc_info=exc)
                            await self._dead_letter_alone(delivery, InvalidEvent(
                                "handler_error", f"{type(exc).__name__}: {exc}"[:10_000]))
                            break
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)

    async def _dead_letter_alone(self, delivery: Delivery, error: InvalidEvent) -> None:
        """Dead-letter one record in a transaction of its own. Should even that fail for
        something other than infrastructure, the letter goes without the event's details
        (the original bytes are all that matter), so that nothing can stop the partition."""
        try:
            await self._apply([Delivery(delivery.record, event=delivery.event, error=error)])
        except Exception as exc:
            if self._retryable(exc):
                raise
            log.exception("%s: dead-lettering %s[%d]@%d with its event failed; without it",
                          self.consumer, delivery.record.topic, delivery.record.partition,
                          delivery.record.offset)
            await self._apply([Delivery(delivery.record, error=error)])

    async def _apply(self, deliveries: list[Delivery]) -> None:
        """One transaction for the batch. Handlers run without savepoints (two round trips
        each saved); if one refuses its event after writing, the batch is redone with a
        savepoint per event, so that only the refused event's writes are undone. A handler
        that needs I/O gets it run outside the transaction, and the batch is redone."""
        batch = Batch()
        savepoints = False
        if self._service.prepare is not None:
            await self._prepare(batch, deliveries)
        for _ in range(MAX_IO_ROUNDS):
            try:
                await self._apply_once(deliveries, batch, savepoints=savepoints)
                return
            except _Refused:
                savepoints = True
            except NeedsIO as needed:
                metrics.IO_ROUNDS.labels(self.consumer).inc()
                known = set(batch.facts)
                await needed.fetch(batch)
                if set(batch.facts) <= known:  # asked again for what it has: a bug, not a batch
                    raise RuntimeError(f"{self.consumer}: a handler asked for I/O ({needed}) that "
                                       "brought nothing new") from needed
        raise RuntimeError(f"{self.consumer}: handlers still needed I/O after {MAX_IO_ROUNDS} rounds")

    async def _prepare(self, batch: Batch, deliveries: list[Delivery]) -> None:
        """The service's I/O for the events it has not applied yet (none is spent on the
        redelivered ones, as far as this process can tell). Only a batch that may repeat what
        this process applied is looked up: one that goes on, partition by partition, past
        where its last batches left off is not (that lookup cost a busy promotion a tenth of
        its batch). What this process cannot tell from offsets is prepared again, never
        applied again (the batch's idempotency insert decides): a duplicate the outbox relay
        republished at a later offset, and, when a partition comes back to this process,
        what another owner applied there past its last committed offset."""
        assert self._service.prepare is not None
        fresh = await self._unprocessed(deliveries) if self._may_repeat(deliveries) else _unique(deliveries)
        ready = [d for d in fresh if d.event is not None and d.error is None]
        if ready:
            events = [d.event for d in ready if d.event is not None]
            parents = {d.event.id: self._parent(d) for d in ready if d.event is not None}
            await self._service.prepare(batch, events, parents)

    async def _apply_once(self, deliveries: list[Delivery], batch: Batch, *, savepoints: bool) -> None:
        batch.committed.clear()  # what an attempt rolled back must not count
        ids = [_event_id(d) for d in deliveries]
        async with self._pool.acquire() as lent:
            conn = cast(asyncpg.Connection, lent)  # the pool's proxy forwards every Connection method
            try:
                # The insert is the idempotency check: what it does not take was applied before.
                inserted = await begin_claiming(conn, self.consumer, ids)
                todo = []
                for delivery, key in zip(deliveries, ids, strict=True):
                    if key in inserted:  # else already applied, or a duplicate within this batch
                        inserted.discard(key)
                        todo.append(delivery)
                scope = self._service.batch_scope
                if scope is None:
                    rows = await self._handle_all(conn, batch, todo, savepoints)
                else:
                    async with scope(conn, [d.event for d in todo if d.event is not None]) as batch.scope:
                        rows = await self._handle_all(conn, batch, todo, savepoints)
                await write_outbox_and_commit(conn, self.consumer, rows)
            except BaseException:
                await roll_back(conn)
                raise
        self._applied(deliveries)
        if rows:  # the relay has something to send (a batch that emits nothing wakes nobody)
            self._on_commit()
        for committed in batch.committed:
            committed()
        if self._service.after_commit is not None:
            await self._service.after_commit(batch)

    async def _handle_all(self, conn: asyncpg.Connection, batch: Batch, todo: list[Delivery],
                          savepoints: bool) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        grouped: dict[str, list[CloudEvent[Any]]] = {}
        for delivery in todo:
            if delivery.event is not None and delivery.record.topic in self._service.batch_handlers:
                grouped.setdefault(delivery.record.topic, []).append(delivery.event)
                continue
            rows.extend(await self._handle(conn, batch, delivery, savepoints))
        for topic, events in grouped.items():
            await self._service.batch_handlers[topic](conn, events)
        return rows

    def _may_repeat(self, deliveries: list[Delivery]) -> bool:
        """Whether a record may have been applied before: it is not past what this process
        applied from its partition (or it comes from one this process has applied nothing of)."""
        for delivery in deliveries:
            record = delivery.record
            after = self._applied_before.get((record.topic, record.partition))
            if after is None or record.offset < after:
                return True
        return False

    def _applied(self, deliveries: list[Delivery]) -> None:
        """Remember, per partition, the offset before which this process applied records."""
        for delivery in deliveries:
            record = delivery.record
            key = (record.topic, record.partition)
            self._applied_before[key] = max(self._applied_before.get(key, 0), record.offset + 1)

    async def _unprocessed(self, deliveries: list[Delivery]) -> list[Delivery]:
        ids = [_event_id(d) for d in deliveries]
        async with self._pool.acquire() as conn:
            done = {r[0] for r in await conn.fetch(
                "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id = ANY($2::uuid[])",
                self.consumer, ids)}
        return _unique([d for d in deliveries if _event_id(d) not in done])

    async def _handle(self, conn: asyncpg.Connection, batch: Batch, delivery: Delivery,
                      savepoints: bool) -> list[OutboxRow]:
        if delivery.error is not None or delivery.event is None:
            return self._dead_letter(delivery.record, delivery.error or InvalidEvent("empty", "no event"),
                                     delivery.event)
        event = delivery.event
        record = delivery.record
        parent = self._parent(delivery)
        if parent is None and self._service.trace_fallback is not None:
            parent = telemetry.parent_from((), fallback=await self._service.trace_fallback(batch, event)) \
                or telemetry.new_trace()
        tx = Tx(conn, self.consumer, event, record=record, sender=delivery.sender, batch=batch)
        started = time.perf_counter()
        token = logs.correlation.set(str(event.correlation))
        try:
            with telemetry.span(f"{self.consumer} handle {record.topic}", kind=SpanKind.CONSUMER, parent=parent,
                                attributes={"messaging.system": "kafka", "messaging.destination.name": record.topic,
                                            "messaging.kafka.partition": record.partition,
                                            "messaging.kafka.offset": record.offset,
                                            "cloudevents.event_id": str(event.id),
                                            "modelreg.model": event.model_name}):
                if savepoints:  # a refusal undoes only this event's writes
                    await conn.execute("SAVEPOINT handler")
                await self._service.handlers[record.topic](tx, event)
                if savepoints:
                    await conn.execute("RELEASE SAVEPOINT handler")
        except InvalidEvent as exc:
            if self._service.batch_scope is not None:
                raise RuntimeError(f"{self.consumer} handles batches in memory and cannot refuse "
                                   f"one event: {exc}") from exc
            if not savepoints:
                raise _Refused from exc
            await conn.execute("ROLLBACK TO SAVEPOINT handler; RELEASE SAVEPOINT handler")
            return self._dead_letter(record, exc, event)
        finally:
            logs.correlation.reset(token)
            metrics.HANDLER_SECONDS.labels(self.consumer, record.topic).observe(time.perf_counter() - started)
        return tx.rows

    def _parent(self, delivery: Delivery) -> Any:
        """The record's trace context; without one, a new trace for this event (shared by its
        I/O and its handling), unless the service remembers the version's own trace."""
        if delivery.trace_parent is None:
            extension = (delivery.event.model_extra or {}).get("traceparent") if delivery.event is not None else None
            delivery.trace_parent = telemetry.parent_from(delivery.record.headers, extension)
            if delivery.trace_parent is None and self._service.trace_fallback is None:
                delivery.trace_parent = telemetry.new_trace()
        return delivery.trace_parent

    def _dead_letter(self, record: Record, error: InvalidEvent,
                     event: CloudEvent[Any] | None) -> list[OutboxRow]:
        self.dead_lettered += 1
        metrics.DEAD_LETTERS.labels(self.consumer, error.kind).inc()
        log.warning("%s: dead-lettered %s[%d]@%d: %s: %s", self.consumer, record.topic,
                    record.partition, record.offset, error.kind, error.message[:200])
        return dead_letter_rows(self.consumer, record, error, event)


class _Refused(Exception):
    """A handler refused its event in a batch run without savepoints: redo with them."""


def dead_letter_rows(service: str, record: Record, error: InvalidEvent,
                     event: CloudEvent[Any] | None) -> list[OutboxRow]:
    """A `registry.dlq` record with the original bytes, and the audit record that says so."""
    key = record.key_text
    name = event.model_name if event is not None else (key if key and _NAME.match(key) else UNKNOWN_MODEL)
    source = f"modelreg/{service}"
    correlation = event.correlation if event is not None else None
    causation = event.id if event is not None else None
    letter = new_event(RegistryDlq, RegistryDlqData(
        original_topic=record.topic, partition=record.partition, offset=record.offset,
        key=key[:1024] if key else None,
        payload_b64=base64.b64encode(record.value or b"").decode(),
        error=DlqError(kind=error.kind, message=storable(error.message[:10_000])), service=service,
    ), source=source, correlationid=correlation, causationid=causation)
    audit = new_event(RegistryAudit, RegistryAuditData(
        action="dead_lettered", name=name,
        version=getattr(event.data, "version", None) if event is not None else None,
        actor=source, reason=storable(f"{error.kind}: {error.message}"[:10_000]),
        evidence={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                  "dlq_event_id": str(letter.id)},
    ), source=source, correlationid=correlation or letter.id, causationid=causation or letter.id)
    return [OutboxRow.of(letter, key=key), OutboxRow.of(audit, key=key)]
