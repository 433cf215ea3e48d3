"""The bus refuses what a principal may not do: outside roles, with a plain kafka-python client
configured from `modelreg stack credentials ROLE`, may write only their one topic; without
credentials nobody connects; the services run as their own principals.

Needs a secured cluster (the local stack from `modelreg stack up` is one): on one without
per-principal credentials these tests fail, saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAuthorizationFailedError

from shared.kafka_acls import OUTSIDE_ROLES, SERVICE_PRINCIPALS
from shared.settings import Settings
from tests.support import cloudevent, unique_name

INTERNAL_TOPICS = ("model.ingested", "model.validated", "model.promoted", "registry.audit")
ROLE_TOPIC = {"pipeline": "model.registered", "qa": "metrics.evaluated", "ops": "promotion.requested"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def principals(endpoints: Any) -> dict[str, dict[str, str]]:
    if not endpoints.kafka_principal_env:
        pytest.fail(f"Kafka at {endpoints.kafka} ({endpoints.origin}) has no per-principal credentials: "
                    "these tests need a secured cluster; a local stack created before Kafka security "
                    "is secured by `modelreg stack down --purge` then `modelreg stack up`")
    return endpoints.kafka_principal_env


def role_env(endpoints: Any, role: str) -> dict[str, str]:
    """What `modelreg stack credentials ROLE` prints, as a shell would have it after eval."""
    out = subprocess.run([sys.executable, "-m", "services.cli.main", "stack", "credentials", role],
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        name, _, value = words[1].partition("=")
        env[name] = value
    return env


def outsider_config(env: dict[str, str]) -> dict[str, Any]:
    """kafka-python settings from the exported variables, as any outside client maps them
    (not through the registry's own code)."""
    return {"bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
            "security_protocol": env["KAFKA_SECURITY_PROTOCOL"],
            "sasl_mechanism": env["KAFKA_SASL_MECHANISM"],
            "sasl_plain_username": env["KAFKA_SASL_USERNAME"],
            "sasl_plain_password": env["KAFKA_SASL_PASSWORD"],
            "ssl_cafile": env["KAFKA_SSL_CAFILE"]}


def produce(config: dict[str, Any], topic: str, value: bytes, key: bytes) -> None:
    # Not idempotent: then the broker's answer is about the topic itself (an idempotent producer
    # with no WRITE anywhere is refused a producer id before it names a topic).
    producer = KafkaProducer(**{"enable_idempotence": False, **config}, acks="all", max_block_ms=10_000,
                             request_timeout_ms=10_000)
    try:
        producer.send(topic, value, key=key).get(timeout=20)
    finally:
        producer.close(timeout=5)


def forged(settings: Settings, topic: str) -> bytes:
    """A CloudEvent about a model no other test knows (other tests tap the same topics)."""
    data = {"name": unique_name("forged"), "version": 1}
    return json.dumps(cloudevent(topic, data, source="modelreg/promotion")).encode()


@pytest.fixture(scope="module")
def local_stack_only(endpoints: Any) -> None:
    if endpoints.origin != "local stack":
        pytest.fail("`modelreg stack credentials` describes the local stack; these endpoints are "
                    f"{endpoints.origin}")


@pytest.mark.parametrize("role", OUTSIDE_ROLES)
async def test_an_outside_role_cannot_write_the_registrys_internal_topics(
        role: str, endpoints: Any, principals: dict, local_stack_only: None, settings: Settings, kafka: Any) -> None:
    config = outsider_config(role_env(endpoints, role))
    for topic in INTERNAL_TOPICS:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.to_thread(produce, config, settings.topic(topic), forged(settings, topic), b"forged")
    await asyncio.sleep(1)
    assert not [s for s in kafka.seen if s.key == "forged"], "a forged record reached a topic"


@pytest.mark.parametrize("role", sorted(ROLE_TOPIC))
async def test_an_outside_role_writes_its_own_topic_and_no_other_roles(
        role: str, endpoints: Any, principals: dict, local_stack_only: None, settings: Settings, kafka: Any) -> None:
    config = outsider_config(role_env(endpoints, role))
    key = unique_name(role).encode()
    own = ROLE_TOPIC[role]
    await asyncio.to_thread(produce, config, settings.topic(own), forged(settings, own), key)
    await kafka.wait_for(own, lambda seen: seen.key == key.decode())
    for other in set(ROLE_TOPIC.values()) - {own}:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.to_thread(produce, config, settings.topic(other), forged(settings, other), key)


async def test_the_reader_reads_every_topic_and_writes_none(
        endpoints: Any, principals: dict, local_stack_only: None, settings: Settings, kafka: Any) -> None:
    config = outsider_config(role_env(endpoints, "reader"))
    with pytest.raises(TopicAuthorizationFailedError):
        await asyncio.to_thread(produce, config, settings.topic("model.registered"),
                                forged(settings, "model.registered"), b"reader")
    key = unique_name("read-me")
    await kafka.publish_raw("model.promoted", forged(settings, "model.promoted"), key)  # the tap: a super user

    def read() -> list[str]:
        consumer = KafkaConsumer(settings.topic("model.promoted"), **config, auto_offset_reset="earliest",
                                 group_id=f"{settings.topic_prefix}reader-{unique_name('test')}",
                                 consumer_timeout_ms=15_000)
        try:
            keys = []
            for record in consumer:
                keys.append(record.key.decode())
                if keys[-1] == key:
                    break
            return keys
        finally:
            consumer.close()

    assert key in await asyncio.to_thread(read)


async def test_without_credentials_no_client_connects(endpoints: Any, principals: dict,
                                                      settings: Settings) -> None:
    with pytest.raises(KafkaTimeoutError, match="bootstrap"):
        await asyncio.to_thread(produce, {"bootstrap_servers": settings.kafka_bootstrap_servers,
                                          "security_protocol": "PLAINTEXT"},
                                settings.topic("model.registered"), forged(settings, "model.registered"),
                                b"anonymous")


async def test_a_wrong_password_is_refused(endpoints: Any, principals: dict, settings: Settings) -> None:
    env = principals["pipeline"]
    config = {"bootstrap_servers": settings.kafka_bootstrap_servers, "security_protocol": "SASL_SSL",
              "sasl_mechanism": env["KAFKA_SASL_MECHANISM"], "sasl_plain_username": "pipeline",
              "sasl_plain_password": env["KAFKA_SASL_PASSWORD"] + "x", "ssl_cafile": env["KAFKA_SSL_CAFILE"]}
    with pytest.raises(KafkaError):
        await asyncio.to_thread(produce, config, settings.topic("model.registered"),
                                forged(settings, "model.registered"), b"guess")


async def test_services_connect_as_their_own_principals(principals: dict, pipeline: dict) -> None:
    # The pipeline fixture runs the pipeline's services; the API and webhooks have tests of their own.
    assert set(SERVICE_PRINCIPALS) - {"api", "webhooks"} <= set(pipeline)
    for name, app in pipeline.items():
        assert app.settings.kafka_sasl_username == name
        assert app.settings.kafka_security_protocol == "SASL_SSL"


def librdkafka_deliveries(config: dict[str, str], records: list[tuple[str, bytes]]) -> list[Any]:
    """Produce with librdkafka (confluent-kafka), as most outside clients do; the delivery
    error of each record (None: written)."""
    from confluent_kafka import Producer

    outcomes: list[Any] = []
    producer = Producer({**config, "message.timeout.ms": 10_000, "socket.timeout.ms": 5_000,
                         "log_level": 0})
    for topic, value in records:
        producer.produce(topic, value, key=b"forged", on_delivery=lambda err, _msg: outcomes.append(err))
    producer.flush(30)
    return outcomes


def librdkafka_config(env: dict[str, str]) -> dict[str, str]:
    """The librdkafka properties `stack status` names, from the exported variables."""
    return {"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "security.protocol": env["KAFKA_SECURITY_PROTOCOL"],
            "sasl.mechanisms": env["KAFKA_SASL_MECHANISM"], "sasl.username": env["KAFKA_SASL_USERNAME"],
            "sasl.password": env["KAFKA_SASL_PASSWORD"], "ssl.ca.location": env["KAFKA_SSL_CAFILE"]}


@pytest.mark.parametrize("role", OUTSIDE_ROLES)
async def test_librdkafka_with_a_roles_credentials_is_refused_forged_internal_events(
        role: str, endpoints: Any, principals: dict, local_stack_only: None, settings: Settings, kafka: Any) -> None:
    from confluent_kafka import KafkaError as RdKafkaError

    config = librdkafka_config(role_env(endpoints, role))
    records = [(settings.topic(topic), forged(settings, topic)) for topic in INTERNAL_TOPICS]
    outcomes = await asyncio.to_thread(librdkafka_deliveries, config, records)
    assert [err.code() if err else None for err in outcomes] == \
        [RdKafkaError.TOPIC_AUTHORIZATION_FAILED] * len(INTERNAL_TOPICS)
    assert not [s for s in kafka.seen if s.key == "forged"]


async def test_librdkafka_without_credentials_delivers_nothing(
        principals: dict, settings: Settings, kafka: Any) -> None:
    config = {"bootstrap.servers": settings.kafka_bootstrap_servers, "security.protocol": "PLAINTEXT"}
    records = [(settings.topic("model.promoted"), forged(settings, "model.promoted"))]
    outcomes = await asyncio.to_thread(librdkafka_deliveries, config, records)
    assert len(outcomes) == 1 and outcomes[0] is not None  # timed out: no broker would talk
    assert not [s for s in kafka.seen if s.key == "forged"]
