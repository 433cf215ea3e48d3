"""One service process: its resources, its Kafka subscription and its outbox relay.

`ServiceApp` is built, not imported: nothing connects until `start()`, so tests point it at
the infrastructure they started and the CLI at the one in the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TransactionalIdAuthorizationFailed
from faststream.kafka.subscriber.usecase import BatchSubscriber

from shared import signing
from shared.broker import (
    TOPIC_CONFIGS,
    OffsetCommits,
    declare_publishers,
    ensure_topics,
    make_broker,
    make_producer,
    partition_lags,
    subscribe,
    subscription_consumer,
    topic_lags,
)
from shared.consumer import BatchProcessor, ServiceHandlers, is_retryable
from shared.db import create_pool, migrate, pending_migrations, service_role
from shared.health import CHECK_TIMEOUT, DEFAULT_PORTS, HealthServer
from shared.idempotency_pruning import keep_for
from shared.kafka_acls import outbox_transactional_id
from shared.keys import load_keyring
from shared.logs import configure as configure_logging
from shared.metrics import LagLabels, report_lags
from shared.outbox import OutboxRelay
from shared.policy import Policy, load_policy
from shared.processed_events_pruner import INTERVAL_SECONDS as PRUNE_INTERVAL_SECONDS
from shared.processed_events_pruner import prune_once
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.telemetry import setup_tracing

log = logging.getLogger(__name__)


async def _unknown_lag(topic: str) -> dict[int, int] | None:
    return None


@dataclass
class Resources:
    """What a service's handlers may use; owned and closed by the `ServiceApp`."""

    settings: Settings
    pool: asyncpg.Pool
    store: ObjectStore
    policy: Policy
    # Per partition of a topic that this instance consumes, the records it has not processed
    # yet (None: not known right now); set once the consumer runs.
    consumer_lag: Callable[[str], Awaitable[dict[int, int] | None]] = field(default=_unknown_lag)


ServiceBuilder = Callable[[Resources], ServiceHandlers]


class ServiceApp:
    def __init__(self, settings: Settings, name: str, build: ServiceBuilder) -> None:
        self.settings = settings
        self.name = name
        self._build = build
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[Any]] = []
        self.processor: BatchProcessor | None = None
        self.relay: OutboxRelay | None = None
        self.resources: Resources | None = None
        self.health: HealthServer | None = None
        self._subscriber: BatchSubscriber | None = None
        self._lag_reported: set[LagLabels] = set()  # the lag series this instance sets

    async def start(self) -> None:
        settings = self.settings
        setup_tracing(self.name, settings.otel_exporter_otlp_endpoint)
        try:
            policy = load_policy(settings.policy_file)  # a bad policy stops the service here
            # Without its key a service could only emit what others dead-letter as forged.
            keyring = load_keyring(settings.keyring_file)
            signing.register(self.name, signing.service_key(settings.signing_key_file, self.name))
            await _when_reachable("PostgreSQL", lambda: migrate(settings.dsn))
            await _when_reachable("Kafka", lambda: ensure_topics(settings))
            pool = await create_pool(settings.dsn, role=service_role(settings.db_role, self.name))
            self._stack.push_async_callback(pool.close)
            store = await self._stack.enter_async_context(ObjectStore(settings))
            await _when_reachable("S3", store.ensure_bucket)
            self.resources = Resources(settings, pool, store, policy)
            handlers = self._build(self.resources)

            broker = make_broker(settings, client_id=f"modelreg-{self.name}")
            producer = OutboxProducer(settings, self.name)
            await _when_reachable("Kafka", producer.start)
            self._stack.push_async_callback(producer.stop)
            self.relay = OutboxRelay(settings.dsn, self.name, producer, settings.topic,
                                     role=service_role(settings.db_role, self.name))
            self.processor = BatchProcessor(pool, handlers, keyring=keyring, on_commit=self.relay.wake)
            offsets = OffsetCommits()
            self._subscriber = subscribe(broker, settings, self.processor, handlers.topics, offsets,
                                         gather=handlers.gather)
            declare_publishers(broker, settings, self.name)
            await broker.start()
            self.resources.consumer_lag = self._lag
            self._stack.push_async_callback(broker.stop)
            self._stack.push_async_callback(offsets.stop)  # runs first: commits what was applied
            port = settings.health_port if settings.health_port is not None else DEFAULT_PORTS.get(self.name, 0)
            self.health = HealthServer(self.name, port, self._checks(pool, store), before_scrape=self._refresh_gauges,
                                       host=settings.health_host)
            await self.health.start()
            self._stack.push_async_callback(self.health.stop)
            self._tasks.append(asyncio.create_task(self.relay.run(), name=f"{self.name}-outbox"))
            window = keep_for(handlers.topics, TOPIC_CONFIGS, timedelta(hours=settings.processed_events_keep_hours))
            consumer = self.processor.consumer
            self._tasks.append(asyncio.create_task(
                every(PRUNE_INTERVAL_SECONDS, lambda: prune_once(pool, consumer, window),
                      f"{self.name}: pruning processed events"), name=f"{self.name}-prune"))
            for index, job in enumerate(handlers.background):
                self._tasks.append(asyncio.create_task(job(), name=f"{self.name}-background-{index}"))
            log.info("%s started: consuming %s", self.name, ", ".join(handlers.topics))
        except BaseException:
            await self.stop()
            raise

    def _checks(self, pool: asyncpg.Pool, store: ObjectStore) -> dict[str, Any]:
        async def postgres() -> None:
            async with pool.acquire(timeout=CHECK_TIMEOUT) as conn:
                if pending := await pending_migrations(conn):
                    raise RuntimeError(f"migrations not applied: {pending}")

        async def kafka() -> None:
            """Any bootstrap server answering will do: a cluster rides out one broker down."""
            failure: Exception | None = None
            for server in self.settings.kafka_bootstrap_servers.split(","):
                host, _, port = server.rpartition(":")
                try:
                    _reader, writer = await asyncio.open_connection(host, int(port))
                except OSError as exc:
                    failure = exc
                    continue
                writer.close()
                return
            raise failure or ConnectionError("no Kafka bootstrap server")

        async def s3() -> None:
            await store.head_bucket()

        return {"postgres": postgres, "kafka": kafka, "s3": s3}

    async def _lag(self, topic: str) -> dict[int, int] | None:
        """How far behind this instance is on each partition of `topic` it is assigned, from
        the high-water marks of the last fetches. None while that is not known: no assignment
        yet (starting, rebalancing), a partition never fetched, or a batch in progress."""
        consumer = subscription_consumer(self._subscriber)
        if consumer is None or self.processor is None or self.processor.busy:
            return None
        return topic_lags(await partition_lags(consumer), self.settings.topic(topic))

    async def _refresh_gauges(self) -> None:
        """Consumer lag per partition and outbox backlog, read when Prometheus scrapes."""
        consumer = subscription_consumer(self._subscriber)
        if consumer is not None:
            prefix = len(self.settings.topic_prefix)
            lags = {(p.topic[prefix:], p.partition): lag for p, lag in (await partition_lags(consumer)).items()}
            self._lag_reported = report_lags(self.name, lags, self._lag_reported)
        if self.relay is not None and self.resources is not None:
            async with self.resources.pool.acquire(timeout=CHECK_TIMEOUT) as conn:
                await self.relay.backlog(conn)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> ServiceApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_until_signalled(self) -> None:
        """Run until SIGINT or SIGTERM; a graceful stop commits what is in flight."""
        configure_logging(self.name)
        async with self:
            tune_garbage_collection()
            await until_signalled()
            log.info("%s stopping", self.name)


class OutboxProducer:
    """The outbox relay's Kafka producers (`shared.outbox.Publisher`): a transactional one,
    and an idempotent one for passes with one row per model. The relay replaces both with
    fresh ones when it takes the lead and after a failure (`shared.outbox.Publisher.replace`
    says why). Every instance of a service shares one transactional id: Kafka fences all but
    the newest transactional producer."""

    def __init__(self, settings: Settings, service: str) -> None:
        self._settings = settings
        self._client_id = f"modelreg-{service}-outbox"
        self._transactional_id = outbox_transactional_id(settings.topic_prefix, service)
        self._producer = self._make()
        self._alone = self._make(transactional=False)

    def _make(self, *, transactional: bool = True) -> AIOKafkaProducer:
        return make_producer(self._settings, self._client_id,
                             transactional_id=self._transactional_id if transactional else None)

    async def _started(self, producer: AIOKafkaProducer) -> AIOKafkaProducer:
        """`producer`, started; stopped again if it could not start (the error says why)."""
        try:
            await producer.start()
        except BaseException as exc:
            await producer.stop()
            if isinstance(exc, TransactionalIdAuthorizationFailed):
                raise TransactionalIdAuthorizationFailed(
                    f"the Kafka principal {self._settings.kafka_sasl_username or '(anonymous)'} may not use the "
                    f"outbox's transactional id {self._transactional_id!r}: apply the registry's ACLs "
                    "(`modelreg stack up` does for the local stack; infra/kafka-acls.sh on a cluster)") from None
            raise
        return producer

    async def _both_started(self, transactional: AIOKafkaProducer,
                            alone: AIOKafkaProducer) -> tuple[AIOKafkaProducer, AIOKafkaProducer]:
        """Both producers started, or neither left running (the error says why)."""
        await self._started(transactional)
        try:
            await self._started(alone)
        except BaseException:
            await transactional.stop()
            raise
        return transactional, alone

    async def start(self) -> None:
        await self._both_started(self._producer, self._alone)

    async def stop(self) -> None:
        await asyncio.gather(self._producer.stop(), self._alone.stop())

    async def begin(self) -> None:
        await self._producer.begin_transaction()

    async def send(self, topic: str, key: str | None, value: bytes, headers: dict[str, str]) -> Any:
        return await _send(self._producer, topic, key, value, headers)

    async def send_alone(self, topic: str, key: str | None, value: bytes, headers: dict[str, str]) -> Any:
        return await _send(self._alone, topic, key, value, headers)

    async def commit(self) -> None:
        await self._producer.commit_transaction()

    async def topic_exists(self, topic: str) -> bool | None:
        try:
            return topic in (await self._producer.client.fetch_all_metadata()).topics()
        except Exception:  # no answer: cannot tell, so the relay keeps retrying
            return None

    async def replace(self) -> None:
        """Start fresh producers (raises, keeping the old ones, while Kafka is away), then drop
        the old ones: what they had not delivered is still in the outbox and goes again."""
        fresh = await self._both_started(self._make(), self._make(transactional=False))
        old = (self._producer, self._alone)
        self._producer, self._alone = fresh
        for producer in old:
            try:
                await asyncio.wait_for(producer.stop(), timeout=CHECK_TIMEOUT * 5)
            except Exception as exc:  # its pending sends fail; their rows are retried
                log.debug("stopping a replaced producer: %s", exc)


async def _send(producer: AIOKafkaProducer, topic: str, key: str | None, value: bytes,
                headers: dict[str, str]) -> Any:
    return await producer.send(topic, value, key=key.encode() if key else None,
                               headers=[(k, v.encode()) for k, v in headers.items()])


def tune_garbage_collection() -> None:
    """A service process allocates many short-lived objects per event and keeps what it
    loaded at start-up for good: freeze the latter out of the collector's sight, and collect
    the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def until_signalled(*also: asyncio.Future[Any]) -> None:
    """Wait for SIGINT or SIGTERM, or for one of `also` to end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiting = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiting, *also}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


async def every(seconds: float, job: Callable[[], Awaitable[Any]], what: str) -> None:
    """Run `job` every `seconds`, for ever; a failure is logged (a passing fault as a warning)
    and the next round tries again."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            passing = is_retryable(exc)
            log.log(logging.WARNING if passing else logging.ERROR, "%s failed: %s", what, exc,
                    exc_info=not passing)
        await asyncio.sleep(seconds)


async def _when_reachable(what: str, attempt: Callable[[], Awaitable[Any]], patience: float = 90.0) -> Any:
    """Start-up waits for infrastructure that is still coming up, rather than dying at once."""
    deadline = asyncio.get_running_loop().time() + patience
    delay = 0.5
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_retryable(exc) and not type(exc).__module__.startswith("aiokafka"):
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("waiting for %s (%s: %s)", what, type(exc).__name__, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
