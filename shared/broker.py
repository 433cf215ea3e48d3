"""Kafka wiring through FastStream: the broker, topic creation and batch subscriptions."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.consumer import BatchProcessor, Record
from shared.events import MAX_MESSAGE_BYTES, TOPICS
from shared.settings import Settings

log = logging.getLogger(__name__)

# The audit topic is the registry's source of truth (replay rebuilds from it): keep it forever.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "registry.audit": {"retention.ms": "-1"},
    # A dead letter carries the refused message base64-encoded: up to 4/3 of the largest
    # record the other topics accept, plus its envelope.
    "registry.dlq": {"retention.ms": str(90 * 24 * 3600 * 1000), "max.message.bytes": str(4 * 1024 * 1024)},
}
# Room for the envelope around a 1 MiB message plus Kafka's record overhead.
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES + 64 * 1024
MAX_REQUEST_BYTES = 4 * 1024 * 1024 + 64 * 1024


def make_broker(settings: Settings, client_id: str) -> KafkaBroker:
    """FastStream's broker, for consuming: the outbox relay publishes with its own producer."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        consumer_only=True,
        allow_auto_create_topics=False,
        graceful_timeout=30.0,
        log_level=logging.DEBUG,
    )


def make_producer(settings: Settings, client_id: str) -> AIOKafkaProducer:
    """The outbox relay's producer: idempotent, acknowledged by every replica, batching a
    relay's burst into few requests (a short linger: latency matters more than bytes)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=256 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
    )


async def ensure_topics(settings: Settings, topics: tuple[str, ...] = TOPICS) -> None:
    """Create every contract topic that is missing; a concurrent creator is no error."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                                client_id="modelreg-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(settings.topic(t), num_partitions=settings.topic_partitions,
                            replication_factor=1 if _single_node(settings) else 3,
                            topic_configs={"max.message.bytes": str(MAX_RECORD_BYTES),
                                           **TOPIC_CONFIGS.get(t, {})})
                   for t in topics if settings.topic(t) not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            await _wait_for_topics(admin, [t.name for t in missing])
    finally:
        await admin.close()


def _single_node(settings: Settings) -> bool:
    return len(settings.kafka_bootstrap_servers.split(",")) == 1


async def _wait_for_topics(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        if set(names) <= set(await admin.list_topics()):
            return
        await asyncio.sleep(0.1)


def subscribe(broker: KafkaBroker, settings: Settings, processor: BatchProcessor,
              topics: tuple[str, ...]) -> Any:
    """One batch subscriber for the service's topics, offsets committed after each batch."""
    prefix_length = len(settings.topic_prefix)
    subscriber = broker.subscriber(
        *(settings.topic(t) for t in topics),
        batch=True,
        group_id=settings.group_id(processor.consumer),
        auto_offset_reset="earliest",
        # Range, not round robin: partition p of every input topic goes to the same member, so
        # one model's events (same key, same partition number) meet in one instance.
        partition_assignment_strategy=(RangePartitionAssignor,),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # Batches big enough to amortise a transaction, small enough that the services of the
        # pipeline work on consecutive batches at once.
        max_records=200,
        # FastStream sleeps this long after an empty poll: keep it short, for latency.
        batch_timeout_ms=5,
        fetch_max_wait_ms=25,
        max_partition_fetch_bytes=MAX_RECORD_BYTES * 2,
        max_poll_interval_ms=10 * 60 * 1000,
    )

    async def on_batch(_body: Any, message: KafkaMessage) -> None:
        raw = message.raw_message if isinstance(message.raw_message, tuple) else (message.raw_message,)
        await processor.process([
            Record(topic=r.topic[prefix_length:], partition=r.partition, offset=r.offset,
                   key=r.key, value=r.value, headers=tuple(r.headers or ()))
            for r in raw
        ])

    subscriber(on_batch, decoder=_keep_raw)
    return subscriber


async def _keep_raw(message: Any) -> Any:
    """The processor parses every record itself, so FastStream need not decode anything."""
    return None
