"""No input can stop a partition: hostile records are dead-lettered with their bytes, a handler
bug is retried a few times and then dead-lettered, and a batch that fails never loses the
records of the other partitions it spans."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import asyncpg
import pytest

from shared.broker import ensure_topics, make_broker, subscribe
from shared.consumer import BatchProcessor, Record, ServiceHandlers, Tx
from shared.events import ModelRegistered
from shared.settings import Settings
from tests.support import Kafka, cloudevent, eventually, for_model, put_artifact, signing_service, unique_name

DEEP = b'{"specversion": "1.0", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def registration(name: str, artifact: dict[str, Any]) -> dict[str, Any]:
    return cloudevent("model.registered", {"name": name, "artifact": artifact, "registered_by": "pipelines/t"})


async def test_hostile_records_are_dead_lettered_and_everything_around_them_is_handled(
        settings: Settings, kafka: Kafka, ingest, db: asyncpg.Pool) -> None:
    """The reported stall: 200 KB of nested arrays among good registrations (one of them sent
    twice) on several partitions, all in one burst so they share batches."""
    names = [unique_name("burst") for _ in range(6)]
    artifacts = {name: await put_artifact(settings, f"inbox/{name}", name.encode()) for name in names}
    duplicate = registration(names[0], artifacts[names[0]])
    too_many_extensions = registration(names[1], artifacts[names[1]]) | {f"x{i}": "v" for i in range(40)}
    huge_extension = registration(names[1], artifacts[names[1]]) | {"note": "n" * 100_000}
    poison = {
        "too_deep": DEEP,
        "not_json": b'{"specversion": "1.0", "id": "\xff\xfe"}',
        "schema_violation": json.dumps(too_many_extensions).encode(),
    }
    poison_keys = {kind: unique_name("poison") for kind in poison}
    await kafka.publish("model.registered", duplicate)
    for kind, value in poison.items():
        await kafka.publish_raw("model.registered", value, key=poison_keys[kind])
    await kafka.publish_raw("model.registered", json.dumps(huge_extension).encode(), key=names[1])
    for name in names[1:]:
        await kafka.publish("model.registered", registration(name, artifacts[name]))
    await kafka.publish("model.registered", duplicate)  # the same event id again: one version

    for name in names:
        await kafka.wait_for("model.ingested", for_model(name))
    for kind, key in poison_keys.items():
        [letter] = await kafka.wait_for("registry.dlq", lambda s, key=key: s.key == key)
        assert letter.data["error"]["kind"] == kind
        assert base64.b64decode(letter.data["payload_b64"]) == poison[kind]
        await kafka.wait_for("registry.audit", lambda s, key=key: s.key == key and s.data["action"] == "dead_lettered")
    [letter] = await kafka.wait_for("registry.dlq", lambda s: s.key == names[1])
    assert letter.data["error"]["kind"] == "schema_violation"
    assert "at most 4096 characters" in letter.data["error"]["message"]
    keys = set(names) | set(poison_keys.values())
    partitions = {s.partition for s in kafka.matching("model.registered") if s.key in keys}
    assert len(partitions) > 1, "the burst should span partitions"
    counts = await db.fetch("SELECT name, count(*) AS n FROM model_versions WHERE name = ANY($1) GROUP BY name", names)
    assert {r["name"]: r["n"] for r in counts} == dict.fromkeys(names, 1)


async def test_a_key_holding_nul_is_dead_lettered_and_its_partition_goes_on(
        settings: Settings, kafka: Kafka, pipeline: Any, db: asyncpg.Pool) -> None:
    """A Kafka key is bytes; PostgreSQL's text holds no NUL. A dead letter keyed by the
    record's key failed its own insert, and the batch was redelivered forever: one record
    stopped its partition for every model on it."""
    name = unique_name("after-nul")
    artifact = await put_artifact(settings, f"inbox/{name}", name.encode())
    topic = settings.topic("model.registered")
    poison = await kafka.producer.send_and_wait(topic, b"not json", key=b"stall\x00me", partition=0)
    await kafka.producer.send_and_wait(topic, json.dumps(registration(name, artifact)).encode(),
                                       key=name.encode(), partition=0)

    await kafka.wait_for("model.ingested", for_model(name))
    [letter] = await kafka.wait_for("registry.dlq", lambda s: s.data.get("offset") == poison.offset
                                    and s.data.get("original_topic") == "model.registered"
                                    and s.data.get("partition") == 0)
    assert letter.data["key"] == "stall\ufffdme" and letter.data["error"]["kind"] == "not_json"
    stored = await eventually(lambda: db.fetchval(
        """SELECT key FROM dead_letters WHERE original_topic = 'model.registered' AND "partition" = 0
           AND "offset" = $1""", poison.offset), timeout=30)
    assert stored == "stall\ufffdme"


async def test_a_handler_bug_is_retried_then_dead_lettered_with_its_traceback(
        db: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    service = signing_service("buggy")
    attempts: dict[str, int] = {}
    handled: list[str] = []

    async def handle(tx: Tx, event: ModelRegistered) -> None:
        attempts[event.data.name] = attempts.get(event.data.name, 0) + 1
        if event.data.name == "buggy":
            raise KeyError("a bug, not bad input")
        handled.append(event.data.name)

    artifact = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}
    batch = [Record("model.registered", p, o, name.encode(),
                    json.dumps(cloudevent("model.registered", {"name": name, "artifact": artifact})).encode())
             for p, o, name in ((0, 0, "before"), (1, 0, "buggy"), (2, 0, "after"))]
    processor = BatchProcessor(db, ServiceHandlers(service, {"model.registered": handle}), max_backoff=0.05)
    with caplog.at_level(logging.ERROR, logger="shared.consumer"):
        await processor.process(batch)

    assert sorted(set(handled)) == ["after", "before"]
    assert 3 <= attempts["buggy"] <= 10, "retried a bounded number of times"
    rows = await db.fetch("SELECT topic, value FROM outbox WHERE service = $1 AND topic = 'registry.dlq'", service)
    [letter] = [json.loads(r["value"])["data"] for r in rows]
    assert letter["error"]["kind"] == "handler_error"
    assert letter["error"]["message"] == "KeyError: 'a bug, not bad input'"
    assert (letter["partition"], letter["offset"]) == (1, 0)
    assert any(r.exc_info and "a bug, not bad input" in str(r.exc_info[1]) for r in caplog.records)
    await processor.process(batch)  # redelivered: nothing is applied or dead-lettered again
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE service = $1 AND topic = 'registry.dlq'",
                             service) == 1
    await db.execute("DELETE FROM outbox WHERE service = $1", service)


async def test_a_failed_batch_spanning_partitions_is_redelivered_whole(settings: Settings, kafka: Kafka) -> None:
    """The batch's first delivery fails outright (as on shutdown or a crash in the glue): every
    partition it spans must be delivered again, none committed past an unhandled record."""
    # Topics of its own: only these records, so the first batch holds every partition's.
    mine = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}rw{uuid.uuid4().hex[:6]}."})
    await ensure_topics(mine, ("model.registered",))
    group_service = f"rewind-{uuid.uuid4().hex[:6]}"
    wanted: set[tuple[int, int]] = set()
    for name in (unique_name("rewind") for _ in range(24)):
        event = registration(name, {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1})
        sent = await kafka.producer.send_and_wait(mine.topic("model.registered"), json.dumps(event).encode(),
                                                  key=name.encode())
        wanted.add((sent.partition, sent.offset))
    assert len({partition for partition, _ in wanted}) > 1

    class FailsFirstBatch:
        consumer = group_service

        def __init__(self) -> None:
            self.calls = 0
            self.first_batch: set[int] = set()
            self.handled: set[tuple[int, int]] = set()

        async def process(self, records: list[Record]) -> None:
            self.calls += 1
            if self.calls == 1:
                self.first_batch = {r.partition for r in records}
                raise RuntimeError("the first batch fails")
            self.handled.update((r.partition, r.offset) for r in records)

    processor = FailsFirstBatch()
    broker = make_broker(mine, client_id=group_service)
    subscribe(broker, mine, processor, ("model.registered",))  # type: ignore[arg-type]
    await broker.start()
    try:
        await eventually(lambda: wanted <= processor.handled, timeout=30)
    finally:
        await broker.stop()
    assert len(processor.first_batch) > 1, "the failed batch should have spanned partitions"


async def test_records_whose_headers_are_not_text_still_reach_the_processor(settings: Settings, kafka: Kafka) -> None:
    """Kafka header values are bytes, which anyone may set. A value that is not UTF-8, or
    null, must not make the batch vanish unapplied (FastStream's own parser decodes every
    header value as text): the records reach the processor, raw headers and all."""
    mine = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}hd{uuid.uuid4().hex[:6]}."})
    await ensure_topics(mine, ("model.registered",))
    group_service = f"headers-{uuid.uuid4().hex[:6]}"
    name = unique_name("headers")
    sent = []
    for headers in ([("traceparent", b"\xff\xfe not text")], [("x-null", None)], []):
        event = registration(name, {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1})
        record = await kafka.producer.send_and_wait(mine.topic("model.registered"), json.dumps(event).encode(),
                                                    key=name.encode(), headers=headers)
        sent.append(record.offset)

    class Recording:
        consumer = group_service

        def __init__(self) -> None:
            self.records: list[Record] = []

        async def process(self, records: list[Record]) -> None:
            self.records.extend(records)

    processor = Recording()
    broker = make_broker(mine, client_id=group_service)
    subscribe(broker, mine, processor, ("model.registered",))  # type: ignore[arg-type]
    await broker.start()
    try:
        await eventually(lambda: sorted(r.offset for r in processor.records) == sent, timeout=30)
    finally:
        await broker.stop()
    assert ("traceparent", b"\xff\xfe not text") in processor.records[0].headers
