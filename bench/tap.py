"""Kafka for the benchmark: a publisher, a tap that reads the registry's topics from "now" and
hands each event about the run's models to a handler, and the built-in QA responder.

Events are told apart by their Kafka key (the model name) before any JSON is parsed, so the
tap keeps up with a busy `registry.audit` topic shared with other users of the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.db import connect
from shared.events import (
    CONTENT_TYPE,
    CloudEvent,
    MetricsEvaluated,
    MetricsEvaluatedData,
    new_event,
)
from shared.kafka_security import kafka_client_options, reader_options
from shared.settings import Settings

SOURCE = "modelreg/bench"
PIPELINE_TOPICS = ("model.ingested", "model.validated", "model.rejected", "qa.requested", "model.promoted",
                   "registry.audit")


@dataclass(frozen=True)
class Seen:
    topic: str            # the contract topic (without the deployment's prefix)
    event: dict[str, Any]
    received: float       # time.time() when the tap read it

    @property
    def data(self) -> dict[str, Any]:
        return self.event.get("data") or {}

    @property
    def key(self) -> tuple[str, int | None]:
        return self.data.get("name", ""), self.data.get("version")

    @property
    def time(self) -> float:
        """The event's CloudEvents `time`, as a Unix timestamp."""
        return datetime.fromisoformat(self.event["time"]).timestamp()


Handler = Callable[[Seen], Awaitable[None] | None]


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all",
                                         enable_idempotence=True, linger_ms=2, max_batch_size=512 * 1024)
        self._pending: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> Publisher:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()
        await self.producer.stop()

    async def send(self, event: CloudEvent[Any]) -> None:
        """Queue one event (keyed by its model name); `flush()` waits for the broker's acks."""
        future = await self.producer.send(
            self.settings.topic(event.topic), event.to_json(), key=(event.subject or "").encode(),
            headers=[("content-type", CONTENT_TYPE.encode())])
        self._pending.append(future)
        if len(self._pending) >= 1000:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)


class Tap:
    """Reads `topics` from their current end; events whose key starts with `prefix` go to `handler`."""

    def __init__(self, settings: Settings, prefix: str, handler: Handler,
                 topics: Iterable[str] = PIPELINE_TOPICS) -> None:
        self.settings = settings
        self.prefix = prefix.encode()
        self.handler = handler
        self.topics = tuple(topics)
        self.consumer = AIOKafkaConsumer(**reader_options(settings), enable_auto_commit=False,
                                         auto_offset_reset="latest", fetch_max_wait_ms=20,
                                         max_partition_fetch_bytes=4 * 1024 * 1024)
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def __aenter__(self) -> Tap:
        await self.consumer.start()
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            name = self.settings.topic(topic)
            found = self.consumer.partitions_for_topic(name)
            for _ in range(50):
                if found:
                    break
                await self.consumer._client.force_metadata_update()  # noqa: SLF001 - topic not yet in metadata
                found = self.consumer.partitions_for_topic(name)
                if not found:
                    await asyncio.sleep(0.1)
            if not found:
                raise RuntimeError(f"topic {name} does not exist: is the stack bootstrapped?")
            partitions += [TopicPartition(name, p) for p in sorted(found)]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve "the end" now, before anything is published
            await self.consumer.position(partition)
        self._task = asyncio.create_task(self._run(), name="bench-tap")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()

    async def _run(self) -> None:
        strip = len(self.settings.topic_prefix)
        try:
            while True:
                batches = await self.consumer.getmany(timeout_ms=50, max_records=5000)
                received = time.time()
                for records in batches.values():
                    for record in records:
                        if not record.key or not record.key.startswith(self.prefix):
                            continue
                        seen = Seen(record.topic[strip:], json.loads(record.value), received)
                        outcome = self.handler(seen)
                        if outcome is not None:
                            await outcome
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by `check()`: a phase must not wait forever on a dead tap
            self.error = exc
            raise

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the Kafka tap failed: {type(self.error).__name__}: {self.error}")


class QaResponder:
    """Answers every `qa.requested` at once with a `metrics.evaluated` per suite, passing
    unless `passes(name, version)` says otherwise.

    `auc` comes from `auc(name, version)`; the latency metric always passes the demo rule.
    """

    def __init__(self, publisher: Publisher, auc: Callable[[str, int], float] | None = None,
                 passes: Callable[[str, int], bool] | None = None) -> None:
        self.publisher = publisher
        self.auc = auc or (lambda _name, _version: 0.95)
        self.passes = passes or (lambda _name, _version: True)
        self.answered: dict[tuple[str, int], float] = {}  # (name, version) -> when published (time.time())
        self.requested: dict[tuple[str, int], float] = {}  # -> the qa.requested event's time

    async def __call__(self, seen: Seen) -> None:
        data = seen.data
        name, version = data["name"], int(data["version"])
        correlation = seen.event.get("correlationid")
        self.requested[(name, version)] = seen.time
        for suite in data.get("suites") or ["offline-eval"]:
            evaluated = MetricsEvaluatedData(
                name=name, version=version, suite=suite, environment="offline",
                metrics={"auc": self.auc(name, version), "latency_p99_ms": 12.0}, passed=self.passes(name, version),
                evaluator="qa/modelreg-bench")  # not the registrant: evaluator_not_author ignores those
            event = new_event(MetricsEvaluated, evaluated, source=SOURCE,
                              correlationid=uuid.UUID(correlation) if correlation else None,
                              causationid=uuid.UUID(seen.event["id"]))
            self.answered[(name, version)] = time.time()
            await self.publisher.send(event)


def random_auc(seed: int) -> Callable[[str, int], float]:
    """AUCs that pass the demo rule's threshold; about one version in ten beats the champion."""
    generator = random.Random(seed)
    return lambda _name, _version: round(generator.uniform(0.90, 0.995), 4)


async def lag(settings: Settings, services: Iterable[str]) -> int:
    """Messages the services' consumer groups have not committed yet, over every partition they
    have committed on."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    consumer = AIOKafkaConsumer(**reader_options(settings), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed: dict[TopicPartition, int] = {}
        for service in services:
            offsets = await admin.list_consumer_group_offsets(settings.group_id(service))
            committed.update({tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0})
        if not committed:
            return 0
        ends = await consumer.end_offsets(list(committed))
        return sum(max(0, ends[tp] - offset) for tp, offset in committed.items())
    finally:
        await consumer.stop()
        await admin.close()


# Archival moves an artifact to cold storage (or back) after the batch or sweep that decided it
# has committed, so its consumers can be caught up while it still works.
_MOVES_DUE = """SELECT count(*) FROM archival_versions
                WHERE (archive_requested_at IS NOT NULL AND archived_at IS NULL) OR restore_requested_at IS NOT NULL"""


async def wait_settled(settings: Settings, services: Iterable[str], timeout: float) -> int:
    """Wait (at most `timeout` s) until nothing is left to do: the services have consumed
    everything and archival has no decided move still to make (then caught up again, with the
    moves' own events). Returns the lag left; an unfinished move counts as one."""
    services = tuple(services)
    deadline = time.monotonic() + timeout
    conn = await connect(settings.dsn)
    try:
        while True:
            left = await wait_caught_up(settings, services, max(0.0, deadline - time.monotonic()))
            moves = int(await conn.fetchval(_MOVES_DUE))
            if moves == 0:
                return left if left else await wait_caught_up(settings, services,
                                                              max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return max(left, 0) + moves
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def wait_caught_up(settings: Settings, services: Iterable[str], timeout: float) -> int:
    """Wait (at most `timeout` s) until the services have consumed everything; returns the lag left."""
    services = tuple(services)
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = await lag(settings, services)
        except Exception:  # the admin API is a nicety here, never a reason to fail a run
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            return -1
        if left == 0 or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(0.5)
