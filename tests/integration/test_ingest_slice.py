"""The first vertical slice on real Kafka, PostgreSQL and S3: model.registered -> ingest."""

from __future__ import annotations

import base64

from tests.support import Kafka, cloudevent, eventually, for_model, unique_name

SHA = "ab" * 32


def registered(name: str, version: int | None = None, sha256: str = SHA) -> dict:
    data = {"name": name, "artifact": {"uri": f"s3://elsewhere/{name}.pkl", "sha256": sha256,
                                       "size_bytes": 10}, "metrics": {"auc": 0.91},
            "tags": {"team": "risk"}, "registered_by": "pipelines/train"}
    if version is not None:
        data["version"] = version
    return cloudevent("model.registered", data)


async def test_registered_version_is_recorded_and_announced(kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    event = registered(name)
    await kafka.publish("model.registered", event)

    ingested = (await kafka.wait_for("model.ingested", for_model(name)))[0]
    assert ingested.key == name
    assert ingested.headers["content-type"] == b"application/cloudevents+json"
    assert ingested.data["version"] == 1
    assert ingested.event["correlationid"] == event["id"]
    assert ingested.event["causationid"] == event["id"]
    audit = await kafka.wait_for("registry.audit", for_model(name))
    assert audit[0].data["action"] == "ingested"
    assert audit[0].event["correlationid"] == event["id"]

    row = await db.fetchrow("SELECT * FROM model_versions WHERE name = $1", name)
    assert row["version"] == 1 and row["sha256"] == SHA
    assert row["metrics"] == {"auc": 0.91} and row["tags"] == {"team": "risk"}
    assert row["registered_by"] == "pipelines/train"


async def test_versions_are_assigned_in_order_and_redelivery_changes_nothing(kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    first, second = registered(name), registered(name, sha256="cd" * 32)
    for event in (first, second, first):  # the third is a redelivery of the first
        await kafka.publish("model.registered", event)
    await kafka.wait_for("model.ingested", for_model(name), count=2)
    explicit = registered(name, version=7, sha256="ef" * 32)
    await kafka.publish("model.registered", explicit)
    await kafka.publish("model.registered", registered(name, version=7, sha256="ef" * 32))  # same artifact
    await kafka.wait_for("model.ingested", for_model(name, 7))
    conflict = registered(name, version=7, sha256="00" * 32)
    await kafka.publish("model.registered", conflict)
    rejected = await kafka.wait_for("model.rejected", for_model(name, 7))
    assert rejected[0].data["reasons"][0]["code"] == "version_conflict"

    rows = await db.fetch("SELECT version, sha256 FROM model_versions WHERE name = $1 ORDER BY version", name)
    assert [(r["version"], r["sha256"]) for r in rows] == [(1, SHA), (2, "cd" * 32), (7, "ef" * 32)]
    assert len(kafka.matching("model.ingested", for_model(name))) == 3
    next_one = registered(name)
    await kafka.publish("model.registered", next_one)
    newest = await kafka.wait_for("model.ingested", for_model(name, 8))
    assert newest[0].event["correlationid"] == next_one["id"]


async def test_poison_messages_go_to_the_dlq_and_consumption_goes_on(kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    bad_schema = registered(name)
    bad_schema["data"]["artifact"]["sha256"] = "not-a-digest"
    wrong_type = registered(name)
    wrong_type["type"] = "model.ingested"
    poison = [
        (b"{not json", "not_json"),
        (b'{"hello": "world"}', "not_cloudevent"),
        (json_bytes(wrong_type), "unknown_type"),
        (json_bytes(bad_schema), "schema_violation"),
        (b"x" * (1024 * 1024 + 10), "too_large"),
    ]
    for value, _ in poison:
        await kafka.publish_raw("model.registered", value, key=name)
    good = registered(name)
    await kafka.publish("model.registered", good)

    await kafka.wait_for("model.ingested", for_model(name))
    letters = await kafka.wait_for("registry.dlq", lambda s: s.key == name, count=len(poison))
    assert sorted(s.data["error"]["kind"] for s in letters) == sorted(kind for _, kind in poison)
    for letter, (value, kind) in zip(sorted(letters, key=lambda s: s.data["offset"]), poison):
        assert letter.data["original_topic"] == "model.registered"
        assert letter.data["service"] == "ingest"
        assert base64.b64decode(letter.data["payload_b64"]) == value, kind
    audits = await kafka.wait_for("registry.audit", lambda s: s.data["action"] == "dead_lettered"
                                  and s.data["name"] == name, count=len(poison))
    assert {a.data["evidence"]["offset"] for a in audits} == {s.data["offset"] for s in letters}
    count = await eventually(lambda: db.fetchval("SELECT count(*) FROM model_versions WHERE name = $1", name))
    assert count == 1


def json_bytes(event: dict) -> bytes:
    import json

    return json.dumps(event).encode()
