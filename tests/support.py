"""Helpers for integration tests: raw Kafka publishing and a tap that collects topics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from shared.kafka_security import kafka_client_options, reader_options
from shared.settings import Settings, load_settings


def signing_service(prefix: str) -> str:
    """A service name, unique to the test, with a fresh signing key registered for it (for
    tests that drive a `BatchProcessor` of their own)."""
    from shared import signing
    from shared.keys import SigningKey

    service = f"{prefix}-{uuid.uuid4().hex[:6]}"
    signing.register(service, SigningKey.generate(service))
    return service


def settings_for(settings: Settings, env: dict[str, str]) -> Settings:
    """`settings` with the given settings (by variable name, e.g. KAFKA_SASL_USERNAME) replaced."""
    return load_settings(**{**settings.model_dump(), **{name.lower(): value for name, value in env.items()}})


# Per principal, its Kafka settings, filled by the integration `kafka` fixture. Here, not in a
# conftest: pytest imports conftest.py under its own name, so a test that imported the
# conftest's module would read another, empty copy of its state.
PRINCIPAL_ENV: dict[str, dict[str, str]] = {}


def as_principal(settings: Settings, principal: str) -> Settings:
    """`settings` connecting to Kafka as `principal` (unchanged on a cluster without them)."""
    env = PRINCIPAL_ENV.get(principal)
    return settings_for(settings, env) if env else settings


def kafka_env(settings: Settings) -> dict[str, str]:
    """The Kafka settings of `settings` as environment variables, for a child process."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
           "KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism}
    optional = {"KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
                "KAFKA_SASL_PASSWORD": settings.kafka_sasl_password.get_secret_value()
                if settings.kafka_sasl_password else None,
                "KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile, "KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
                "KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile}
    return {**env, **{name: str(value) for name, value in optional.items() if value}}


def signed(settings: Settings, event: Any, service: str = "promotion") -> bytes:
    """`event` (a CloudEvent model) as `service` would publish it: signed with its key."""
    from shared.signing import service_key

    return service_key(settings.signing_key_file, service).sign_event_bytes(event.to_json())


def unique_name(prefix: str = "model") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cloudevent(topic: str, data: dict[str, Any], *, source: str = "tests/pipeline",
               event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A CloudEvent as an outside producer writes it: plain JSON, no project code."""
    event = {
        "specversion": "1.0", "id": event_id or str(uuid.uuid4()), "type": topic, "source": source,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json", "data": data, **extra,
    }
    if "name" in data:
        event["subject"] = data["name"]
    return event


@dataclass
class Seen:
    topic: str
    key: str | None
    partition: int
    offset: int
    headers: dict[str, bytes]
    value: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.value)

    @property
    def data(self) -> dict[str, Any]:
        """The event's data; {} for a record without any (a forgery another test sent to the
        session's topics must not break every other test's predicates)."""
        try:
            event = self.event
        except (ValueError, RecursionError):  # not JSON, or a poison record nested past any parser
            return {}
        data = event.get("data") if isinstance(event, dict) else None
        return data if isinstance(data, dict) else {}


class Kafka:
    """A raw producer and a tap over this run's (prefixed) topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(**kafka_client_options(settings),
                                         acks="all", linger_ms=1,
                                         max_request_size=4 * 1024 * 1024)
        self.consumer: AIOKafkaConsumer | None = None
        self.seen: list[Seen] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, topics: tuple[str, ...]) -> None:
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(**reader_options(self.settings),
                                         enable_auto_commit=False, auto_offset_reset="earliest")
        await self.consumer.start()
        partitions = []
        for topic in topics:
            name = self.settings.topic(topic)
            for _ in range(100):
                found = self.consumer.partitions_for_topic(name)
                if found:
                    break
                await self.consumer._client.force_metadata_update()  # topic just created
                await asyncio.sleep(0.1)
            partitions += [TopicPartition(name, p) for p in sorted(found or ())]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.consumer is not None
        prefix = len(self.settings.topic_prefix)
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for r in records:
                    self.seen.append(Seen(r.topic[prefix:], r.key.decode() if r.key else None,
                                          r.partition, r.offset, dict(r.headers or ()), r.value or b""))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.consumer:
            # The collector was cancelled mid-fetch: aiokafka's fetcher may then end with the
            # fetch's timeout (seen at session end on a loaded machine). The tap is done either way.
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await self.consumer.stop()
        await self.producer.stop()

    async def publish_raw(self, topic: str, value: bytes, key: str | None) -> None:
        await self.producer.send_and_wait(self.settings.topic(topic), value,
                                          key=key.encode() if key is not None else None,
                                          headers=[("content-type", b"application/cloudevents+json")])

    async def publish(self, topic: str, event: dict[str, Any], key: str | None = None) -> None:
        await self.publish_raw(topic, json.dumps(event).encode(),
                               key if key is not None else event["data"].get("name"))

    def matching(self, topic: str, predicate: Callable[[Seen], bool] = lambda s: True) -> list[Seen]:
        return [s for s in list(self.seen) if s.topic == topic and predicate(s)]

    async def wait_for(self, topic: str, predicate: Callable[[Seen], bool] = lambda s: True,
                       *, count: int = 1, timeout: float = 30.0) -> list[Seen]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(topic, predicate)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"saw {len(self.matching(topic, predicate))} of {count} expected "
                             f"events on {topic} within {timeout}s")


def for_model(name: str, version: int | None = None) -> Callable[[Seen], bool]:
    def predicate(seen: Seen) -> bool:
        data = seen.data
        return data.get("name") == name and (version is None or data.get("version") == version)
    return predicate


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Retry an async or sync check until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def put_artifact(settings: Settings, key: str, body: bytes) -> dict[str, Any]:
    """Upload an artifact where ingest may read it; returns the event's `artifact` field."""
    import hashlib

    from shared.storage import ObjectStore

    async with ObjectStore(settings) as store:
        await store.ensure_bucket()
        await (await store.boto()).put_object(Bucket=settings.s3_bucket, Key=key, Body=body)
    return {"uri": f"s3://{settings.s3_bucket}/{key}", "sha256": hashlib.sha256(body).hexdigest(),
            "size_bytes": len(body)}
