"""Kafka wiring through FastStream: the broker, topic creation and batch subscriptions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from itertools import chain
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    ConsumerStoppedError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.publisher.usecase import DefaultPublisher
from faststream.kafka.subscriber.usecase import BatchSubscriber

from shared.consumer import Record
from shared.events import CATALOGUE, MAX_DEAD_LETTER_BYTES, MAX_MESSAGE_BYTES, TOPICS
from shared.kafka_acls import service_writes
from shared.kafka_security import faststream_security, kafka_client_options
from shared.settings import Settings

log = logging.getLogger(__name__)

# The audit topic is the registry's source of truth (replay rebuilds from it): keep it forever,
# whole: never compacted (a compaction keeps one record per key) nor trimmed by time or size.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "registry.audit": {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
    # A dead letter carries the refused message base64-encoded: up to 4/3 of the largest
    # record the other topics accept, plus its envelope.
    "registry.dlq": {"retention.ms": str(90 * 24 * 3600 * 1000), "max.message.bytes": str(MAX_DEAD_LETTER_BYTES)},
}
# Room for the envelope around a 1 MiB message plus Kafka's record overhead.
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES + 64 * 1024
MAX_REQUEST_BYTES = 4 * 1024 * 1024 + 64 * 1024
# Records a service takes per batch: enough to amortise a transaction, few enough that the
# pipeline's services work on consecutive batches at once.
MAX_BATCH_RECORDS = 200
# How long an idle consumer waits for records before its loop turns once more.
LONG_POLL_MS = 500
# What a gathering consumer's fetch waits for (else the long poll's end): more than a busy
# second of the registry's events.
GATHER_BYTES = 1024 * 1024
# How long an applied batch's offsets may wait to be committed with later ones.
OFFSET_COMMIT_SECONDS = 1.0


def make_broker(settings: Settings, client_id: str) -> KafkaBroker:
    """FastStream's broker, for consuming and for declaring what the service publishes
    (`declare_publishers`); the outbox relay sends with its own producer (`make_producer`)."""
    return KafkaBroker(
        # A list: FastStream takes one string as one host, "a:9092,b:9092" included.
        settings.kafka_bootstrap_servers.split(","),
        security=faststream_security(settings),
        client_id=client_id,
        consumer_only=True,
        allow_auto_create_topics=False,
        graceful_timeout=30.0,
        log_level=logging.DEBUG,
    )


def make_producer(settings: Settings, client_id: str, transactional_id: str | None = None) -> AIOKafkaProducer:
    """The outbox relay's producer: transactional (`transactional_id`: shared/outbox.py says
    why) or at least idempotent, acknowledged by every replica, batching a relay's burst into
    few requests (a short linger: latency matters more than bytes).

    aiokafka's, not FastStream's: the relay sends an outbox row's bytes (signed when it was
    written) with exactly the row's headers, where FastStream's producer adds its own
    `content-type` and `correlation_id` headers; and after a cluster outage the relay replaces
    its producer with a fresh one (a new idempotent producer id, see `OutboxProducer.replace`),
    where FastStream's producer lives and dies with the broker's connection, consumer included.
    """
    return AIOKafkaProducer(
        **kafka_client_options(settings),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        linger_ms=2,
        max_batch_size=256 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
    )


async def ensure_topics(settings: Settings, topics: tuple[str, ...] = TOPICS) -> None:
    """Create every contract topic that is missing; a concurrent creator is no error."""
    admin = make_admin(settings, "modelreg-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if settings.topic(t) not in existing]
        if not wanted:
            return
        brokers = len((await admin.describe_cluster())["brokers"])
        replicas, min_insync = replication(settings, brokers)
        missing = [NewTopic(settings.topic(t), num_partitions=settings.topic_partitions,
                            replication_factor=replicas,
                            topic_configs={"max.message.bytes": str(MAX_RECORD_BYTES),
                                           "min.insync.replicas": str(min_insync),
                                           **TOPIC_CONFIGS.get(t, {})})
                   for t in wanted]
        try:
            await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            pass
        except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError):
            raise TopicsMissingError(
                f"Kafka topics {', '.join(t.name for t in missing)} do not exist and "
                f"{settings.kafka_sasl_username or 'this client'} may not create them: an admin "
                "creates them (`modelreg stack up` does, for the local stack)") from None
        await _wait_for_topics(admin, [t.name for t in missing])
    finally:
        await admin.close()


class TopicsMissingError(RuntimeError):
    """The registry's topics are missing and this principal may not create them."""


def make_admin(settings: Settings, client_id: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**kafka_client_options(settings), client_id=client_id)


def replication(settings: Settings, brokers: int) -> tuple[int, int]:
    """Replication factor and min.insync.replicas of new topics: the settings, else 3 and 2
    on a cluster of three or more brokers (a write survives one broker down), else 1 and 1."""
    replicas = settings.topic_replication_factor or (3 if brokers >= 3 else 1)
    min_insync = settings.topic_min_insync_replicas or (2 if replicas >= 3 else 1)
    if min_insync > replicas:
        raise ValueError(f"MODELREG_TOPIC_MIN_INSYNC_REPLICAS: {min_insync} is more than the "
                         f"replication factor {replicas}: no write could ever be acknowledged")
    return replicas, min_insync


async def _wait_for_topics(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        if set(names) <= set(await admin.list_topics()):
            return
        await asyncio.sleep(0.1)


class RecordBatches(Protocol):
    """What a subscription hands its batches to: `shared.consumer.BatchProcessor` in a service."""

    @property
    def consumer(self) -> str: ...

    async def process(self, records: Sequence[Record]) -> None: ...


class OffsetCommits:
    """Commits a subscription's offsets at most once per `interval`, from its poll loop.

    Per batch, FastStream's acknowledgement commits the position of every assigned partition
    (a service reading seven topics names 42): one round trip between each batch and the next
    fetch, which under a light load (a batch or two per event) is most of a hop. Offsets only
    bound what a restarted or rebalanced member reads again, and every handler absorbs a
    redelivery (processed_events), so a batch's offsets may wait for the next commit.

    The commit goes where nothing can be in flight: as the loop is about to poll again, every
    record handed over before has been applied (or nacked: sought back). There the consumer's
    own positions are committed (aiokafka's `commit()`), transaction markers consumed after a
    batch's last record included. It keeps committing for a while after the last records, so
    that the group's offsets reach the end of what was applied; an idle consumer commits
    nothing. A commit that fails (a rebalance) is tried again at the next poll."""

    def __init__(self, interval: float = OFFSET_COMMIT_SECONDS) -> None:
        self.interval = interval
        self._due_at = 0.0  # the next commit not before
        self._moving_until = 0.0  # positions may have moved since the last commit until then
        self._handed_over = False  # records out with the handler
        self._consumer: AIOKafkaConsumer | None = None

    async def before_poll(self, consumer: AIOKafkaConsumer) -> None:
        """The loop is about to poll: what it handed over before has been applied."""
        self._consumer, self._handed_over = consumer, False
        now = asyncio.get_running_loop().time()
        if self._due_at <= now <= self._moving_until:
            self._due_at = now + self.interval
            await self._commit(consumer)

    def polled(self, records: int) -> None:
        if records:
            self._handed_over = True
            self._keep_committing()

    def _keep_committing(self) -> None:
        """Commit at the polls of the next while: past the next poll after the next commit, as a
        marker after a batch's last record is consumed by a later poll and must be committed too."""
        self._moving_until = asyncio.get_running_loop().time() + 2 * self.interval + LONG_POLL_MS / 1000

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await consumer.commit()
        except ConsumerStoppedError:
            return  # stopped: a restart reads these again and recognises them
        except KafkaError as exc:
            log.info("offsets not committed (%s: %s); trying again at the next poll", type(exc).__name__, exc)
            self._keep_committing()

    async def stop(self) -> None:
        """A graceful stop commits what was applied, unless a batch is still out (then its
        records come again after the restart)."""
        if self._consumer is not None and not self._handed_over:
            await self._commit(self._consumer)


def subscribe(broker: KafkaBroker, settings: Settings, processor: RecordBatches,
              topics: tuple[str, ...], offsets: OffsetCommits | None = None, *,
              gather: bool = False) -> BatchSubscriber:
    """One batch subscriber for the service's topics; a failed batch is sought back to (its
    records come again), an applied one's offsets are committed by `offsets` (a fresh
    `OffsetCommits` when not given). `gather`: the broker holds each fetch for up to the long
    poll to fill it, for a consumer that trades that much latency for fewer, fuller batches."""
    offsets = offsets or OffsetCommits()
    prefix_length = len(settings.topic_prefix)
    subscriber = broker.subscriber(
        *(settings.topic(t) for t in topics),
        batch=True,
        group_id=settings.group_id(processor.consumer),
        auto_offset_reset="earliest",
        # Range, not round robin: partition p of every input topic goes to the same member, so
        # one model's events (same key, same partition number) meet in one instance.
        partition_assignment_strategy=(RangePartitionAssignor,),
        # Acknowledged by on_batch itself: a nack on failure, offsets through OffsetCommits.
        ack_policy=AckPolicy.MANUAL,
        # The outbox relays publish in Kafka transactions: an aborted attempt is never read.
        isolation_level="read_committed",
        max_records=MAX_BATCH_RECORDS,
        # The broker holds an empty fetch this long and answers the moment a record arrives
        # (or, gathering, once the fetch is full or the wait is over).
        fetch_max_wait_ms=LONG_POLL_MS,
        fetch_min_bytes=GATHER_BYTES if gather else 1,
        max_partition_fetch_bytes=MAX_RECORD_BYTES * 2,
        max_poll_interval_ms=10 * 60 * 1000,
    )

    context = broker.context

    async def on_batch(_body: Any) -> None:
        # The message from FastStream's context, not as an argument: FastStream resolves an
        # injected argument through fast_depends, which runs its synchronous resolver in a
        # worker thread (anyio.to_thread), a thread hop for every batch.
        message: KafkaMessage = context.get_local("message")
        # A batch: a tuple of records from Kafka, a list from FastStream's TestKafkaBroker.
        raw = message.raw_message if isinstance(message.raw_message, (tuple, list)) else (message.raw_message,)
        consumer = message.consumer if isinstance(message.consumer, AIOKafkaConsumer) else None
        try:
            await processor.process([
                Record(topic=r.topic[prefix_length:], partition=r.partition, offset=r.offset,
                       key=r.key, value=r.value, headers=tuple(r.headers or ()), timestamp=r.timestamp)
                for r in raw
            ])
        except BaseException:
            if consumer is not None:  # (FastStream's TestKafkaBroker has nothing to seek)
                await message.nack()  # each partition sought back to the batch's first record
            raise

    subscriber(on_batch, parser=_parse_without_header_text, decoder=_keep_raw)
    _poll_without_sleeping(subscriber, max_records=MAX_BATCH_RECORDS, offsets=offsets)
    return subscriber


def declare_publishers(broker: KafkaBroker, settings: Settings, service: str) -> list[DefaultPublisher]:
    """A FastStream publisher for each topic `service` may write (its Kafka ACLs), with the
    topic's event model, so that FastStream's AsyncAPI documents what the service sends as
    well as what it receives (`shared.schemagen` builds `schemas/asyncapi.yaml` from it).
    Nothing publishes through them: the outbox relay sends (`make_producer` says why)."""
    return [broker.publisher(settings.topic(topic), schema=CATALOGUE[topic].envelope,
                             description=CATALOGUE[topic].summary)
            for topic in service_writes(service)]


def _poll_without_sleeping(subscriber: BatchSubscriber, *, max_records: int, offsets: OffsetCommits) -> None:
    """Long polls instead of FastStream's short ones.

    FastStream's batch subscriber (0.7) calls `getmany(timeout_ms=batch_timeout_ms)` and, when
    that comes back empty, sleeps `batch_timeout_ms` more. `getmany` already returns the moment
    a record arrives, so only the sleep costs latency: a short timeout spins an idle service
    (5-8% of a core each at 5 ms), a long one delays the first record after a quiet spell by up
    to the timeout. Without the sleep, one long `getmany` gives both: an idle loop wakes twice a
    second and a record is handed over as soon as the fetcher has it. FastStream has no option
    for this, so the subscriber's poll is replaced on this one instance. FastStream calls it
    once the previous batch is done, which makes it where offsets are committed (`offsets`).
    """
    async def get_msg(consumer: Any) -> tuple[Any, ...]:
        await offsets.before_poll(consumer)
        batches = await consumer.getmany(timeout_ms=LONG_POLL_MS, max_records=max_records)
        records = tuple(chain.from_iterable(batches.values()))
        offsets.polled(len(records))
        return records

    if not callable(getattr(subscriber, "get_msg", None)):  # pragma: no cover - a FastStream upgrade
        raise RuntimeError("FastStream's batch subscriber no longer has get_msg: revisit _poll_without_sleeping")
    subscriber.get_msg = get_msg  # type: ignore[method-assign]  # on this one instance, as said above


async def _parse_without_header_text(records: Any, parse: Callable[[Any], Awaitable[Any]]) -> Any:
    """FastStream's batch parser decodes every header value as UTF-8 for its message object.
    A value that is not text (or null), which anyone who may write a topic can send, makes it
    raise; FastStream then drops the whole batch unapplied, and the next poll's commit passes
    over it: every record of the batch lost, whoever sent them. It parses copies without
    headers (it needs none: the processor reads each record's own); the records themselves,
    headers and all, stay the message's raw records."""
    if not isinstance(records, tuple):  # FastStream's TestKafkaBroker hands over its own kind
        return await parse(records)
    message = await parse(tuple(replace(r, headers=()) if isinstance(r, ConsumerRecord) else r for r in records))
    message.raw_message = records
    return message


async def _keep_raw(message: Any) -> Any:
    """The processor parses every record itself, so FastStream need not decode anything."""
    return None


class ConsumerOffsets(Protocol):
    """What consumer lag is read from: aiokafka's public `AIOKafkaConsumer` calls."""

    def assignment(self) -> set[TopicPartition]: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def last_stable_offset(self, partition: TopicPartition) -> int | None: ...

    async def position(self, partition: TopicPartition) -> int: ...


def subscription_consumer(subscriber: BatchSubscriber | None) -> ConsumerOffsets | None:
    """The Kafka consumer a started subscription runs on (None before it starts and after it
    stops, and on FastStream's TestKafkaBroker): FastStream's subscriber exposes it as its
    public, typed `consumer` attribute."""
    return None if subscriber is None else subscriber.consumer


async def partition_lags(consumer: ConsumerOffsets) -> dict[TopicPartition, int | None]:
    """Per partition assigned to `consumer`, the records between its position and the end
    its last fetch from that partition saw (None: not fetched yet): the last stable offset of
    a consumer reading committed records (a transaction still open is not readable yet), else
    the high-water mark."""
    lags: dict[TopicPartition, int | None] = {}
    for partition in consumer.assignment():
        stable = consumer.last_stable_offset(partition)
        end = stable if stable is not None and stable >= 0 else consumer.highwater(partition)
        lags[partition] = None if end is None else max(0, end - await consumer.position(partition))
    return lags


def topic_lags(lags: Mapping[TopicPartition, int | None], topic: str) -> dict[int, int] | None:
    """`lags` of `topic`'s partitions, by partition number; None when none of them is
    assigned (starting, rebalancing) or the lag of one is not known yet."""
    mine = {partition.partition: lag for partition, lag in lags.items() if partition.topic == topic}
    if not mine:
        return None
    known = {partition: lag for partition, lag in mine.items() if lag is not None}
    return known if len(known) == len(mine) else None


async def ensure_topics_once_up(settings: Settings, attempts: int = 60) -> None:
    """`ensure_topics` against a broker that has just started: retried each second until it
    answers, the last failure raised."""
    for attempt in range(attempts):
        try:
            await ensure_topics(settings)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1)
