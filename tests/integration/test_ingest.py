"""ingest on real Kafka, PostgreSQL and S3: artifacts copied and checked, versions assigned,
bad input refused or dead-lettered."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest

from services.ingest.store import claim_next_versions
from shared.settings import Settings
from shared.storage import PART_SIZE, ObjectStore, parse_s3_uri
from tests.support import Kafka, cloudevent, eventually, for_model, put_artifact, unique_name


def registered(name: str, artifact: dict, version: int | None = None, **data) -> dict:
    body = {"name": name, "artifact": artifact, "metrics": {"auc": 0.91}, "tags": {"team": "risk"},
            "params": {"depth": 6}, "registered_by": "pipelines/train", "run_id": "run-1", **data}
    if version is not None:
        body["version"] = version
    return cloudevent("model.registered", body)


async def stored(settings: Settings, uri: str) -> bytes | None:
    async with ObjectStore(settings) as store:
        location = parse_s3_uri(uri)
        if await store.head(location) is None:
            return None
        return b"".join([c async for c in store.stream(location)])


async def test_artifact_is_copied_content_addressed_and_the_version_recorded(
        settings: Settings, kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    body = os.urandom(3000)
    artifact = await put_artifact(settings, f"inbox/{name}.bin", body)
    event = registered(name, artifact, dataset={"uri": "s3://d/x", "version": "7"}, description="first")
    await kafka.publish("model.registered", event)

    ingested = (await kafka.wait_for("model.ingested", for_model(name)))[0]
    sha = artifact["sha256"]
    assert ingested.key == name
    assert ingested.headers["content-type"] == b"application/cloudevents+json"
    assert ingested.data["version"] == 1
    assert ingested.data["artifact"]["uri"] == f"s3://{settings.s3_bucket}/artifacts/{name}/1/{sha}"
    assert ingested.data["description"] == "first"
    assert ingested.event["correlationid"] == event["id"] == ingested.event["causationid"]
    assert await stored(settings, ingested.data["artifact"]["uri"]) == body
    audit = await kafka.wait_for("registry.audit", for_model(name))
    assert audit[0].data["action"] == "ingested" and audit[0].event["correlationid"] == event["id"]

    row = await db.fetchrow("SELECT * FROM model_versions WHERE name = $1", name)
    assert (row["version"], row["status"], row["sha256"], row["size_bytes"]) == (1, "ingested", sha, 3000)
    assert row["metrics"] == {"auc": 0.91} and row["tags"] == {"team": "risk"} and row["params"] == {"depth": 6}
    assert row["dataset"] == {"uri": "s3://d/x", "version": "7"} and row["run_id"] == "run-1"
    assert row["registered_by"] == "pipelines/train" and row["source"] == "tests/pipeline"


async def test_versions_duplicates_and_conflicts(settings: Settings, kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    a = await put_artifact(settings, f"inbox/{name}-a", b"model a")
    b = await put_artifact(settings, f"inbox/{name}-b", b"model b")
    first, second = registered(name, a), registered(name, b)
    for event in (first, second, first):  # the third is a redelivery of the first
        await kafka.publish("model.registered", event)
    await kafka.wait_for("model.ingested", for_model(name), count=2)
    await kafka.publish("model.registered", registered(name, b, version=7))
    await kafka.publish("model.registered", registered(name, b, version=7))  # same artifact: a duplicate
    await kafka.wait_for("model.ingested", for_model(name, 7))
    await kafka.publish("model.registered", registered(name, a, version=7))  # taken by another artifact
    rejected = await kafka.wait_for("model.rejected", for_model(name))
    assert rejected[0].data["reasons"][0]["code"] == "version_conflict"
    assert rejected[0].data.get("version") is None  # v7 stays the other artifact's, unblocked
    conflict = await kafka.wait_for("registry.audit", lambda s: for_model(name)(s) and s.data["action"] == "rejected")
    assert conflict[0].data["evidence"]["requested_version"] == 7
    nxt = registered(name, a)
    await kafka.publish("model.registered", nxt)
    newest = await kafka.wait_for("model.ingested", for_model(name, 8))
    assert newest[0].event["correlationid"] == nxt["id"]

    rows = await db.fetch("SELECT version, sha256 FROM model_versions WHERE name = $1 ORDER BY version", name)
    assert [(r["version"], r["sha256"]) for r in rows] == [
        (1, a["sha256"]), (2, b["sha256"]), (7, b["sha256"]), (8, a["sha256"])]
    assert len(kafka.matching("model.ingested", for_model(name))) == 4
    # the conflicting artifact was never stored under version 7
    assert await stored(settings, f"s3://{settings.s3_bucket}/artifacts/{name}/7/{a['sha256']}") is None


async def test_concurrent_registrations_of_one_name_get_distinct_versions(
        settings: Settings, kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    artifact = await put_artifact(settings, f"inbox/{name}", b"same bytes")
    events = [registered(name, artifact) for _ in range(40)]
    for event in events:
        await kafka.publish("model.registered", event)
    await kafka.wait_for("model.ingested", for_model(name), count=40)
    versions = await db.fetch("SELECT version FROM model_versions WHERE name = $1 ORDER BY version", name)
    assert [r["version"] for r in versions] == list(range(1, 41))


async def test_version_claims_number_each_name_in_event_order_and_are_kept_per_event(db) -> None:
    """`claim_next_versions`, one statement: numbers per name in the order of the events,
    an event given twice claims once, a claim is the same when its event comes again, and
    claims made at the same time on one name never share a number."""
    first, second = unique_name("claims"), unique_name("claims")
    ids = [uuid.uuid4() for _ in range(5)]
    async with db.acquire() as conn:
        claimed = await claim_next_versions(conn, [(ids[0], first), (ids[1], second), (ids[2], first),
                                                   (ids[0], first), (ids[3], first)])
        assert claimed == {ids[0]: 1, ids[1]: 1, ids[2]: 2, ids[3]: 3}
        again = await claim_next_versions(conn, [(ids[4], first), (ids[2], first)])
        assert again == {ids[4]: 4, ids[2]: 2}

    async def claim(event_id: uuid.UUID) -> int:
        async with db.acquire() as conn:
            return (await claim_next_versions(conn, [(event_id, second)]))[event_id]

    concurrent = await asyncio.gather(*(claim(uuid.uuid4()) for _ in range(12)))
    assert sorted(concurrent) == list(range(2, 14))


async def test_a_registration_with_headers_that_are_not_text_is_ingested(
        settings: Settings, kafka: Kafka, ingest) -> None:
    """Header values are whatever a producer sends: bytes that are not UTF-8, or null, are
    not a reason to drop the registration (nor the others fetched with it)."""
    name = unique_name("headers")
    artifact = await put_artifact(settings, f"inbox/{name}.bin", b"weights")
    await kafka.producer.send_and_wait(
        settings.topic("model.registered"), json.dumps(registered(name, artifact)).encode(), key=name.encode(),
        headers=[("traceparent", b"\xff\xfe"), ("x-empty", None), ("content-type", b"\xc3(")])
    await kafka.publish("model.registered", registered(name, artifact))
    ingested = await kafka.wait_for("model.ingested", for_model(name), count=2)
    assert sorted(seen.data["version"] for seen in ingested) == [1, 2]


async def test_checksum_and_size_mismatches_are_rejected_and_nothing_stored(
        settings: Settings, kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    artifact = await put_artifact(settings, f"inbox/{name}", b"the real bytes")
    wrong_sha = dict(artifact, sha256="0" * 64)
    wrong_size = dict(artifact, size_bytes=artifact["size_bytes"] + 5)
    await kafka.publish("model.registered", registered(name, wrong_sha))
    await kafka.publish("model.registered", registered(name, wrong_size))
    rejected = await kafka.wait_for("model.rejected", for_model(name), count=2)
    codes = sorted(r.data["reasons"][0]["code"] for r in rejected)
    assert codes == ["checksum_mismatch", "size_mismatch"]
    audits = await kafka.wait_for("registry.audit", lambda s: for_model(name)(s) and s.data["action"] == "rejected",
                                  count=2)
    mismatch = next(a for a in audits if a.data["evidence"]["code"] == "checksum_mismatch")
    assert mismatch.data["evidence"]["expected_sha256"] == "0" * 64
    assert mismatch.data["evidence"]["found_sha256"] == artifact["sha256"]
    rows = await db.fetch("SELECT status FROM model_versions WHERE name = $1", name)
    assert [r["status"] for r in rows] == ["rejected", "rejected"]
    for version in (1, 2):
        for sha in ("0" * 64, artifact["sha256"]):
            assert await stored(settings, f"s3://{settings.s3_bucket}/artifacts/{name}/{version}/{sha}") is None


LARGE = PART_SIZE + 1024 * 1024  # more than one part: the S3 server copies it


async def stored_digest(settings: Settings, uri: str) -> tuple[str, int] | None:
    async with ObjectStore(settings) as store:
        return await store.digest(parse_s3_uri(uri))


async def test_an_artifact_of_several_parts_is_copied_by_the_s3_server_and_checked(
        settings: Settings, kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    body = os.urandom(LARGE)
    artifact = await put_artifact(settings, f"inbox/{name}", body)
    await kafka.publish("model.registered", registered(name, artifact))
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    uri = ingested.data["artifact"]["uri"]
    assert await stored_digest(settings, uri) == (artifact["sha256"], LARGE)
    async with ObjectStore(settings) as store:
        exists, checksum = await store.stored_checksum(parse_s3_uri(uri))
    # The local stack's versitygw computes the SHA-256 of the copy (a server that cannot would
    # leave no checksum and ingest hashes the copy itself); it is the announced one either way.
    assert exists and checksum in (artifact["sha256"], None)

    # Announced wrong: the server's checksum gives it away, and the copy is removed.
    await kafka.publish("model.registered", registered(name, dict(artifact, sha256="1" * 64)))
    await kafka.publish("model.registered", registered(name, dict(artifact, size_bytes=LARGE - 1)))
    rejected = await kafka.wait_for("model.rejected", for_model(name), count=2)
    assert sorted(r.data["reasons"][0]["code"] for r in rejected) == ["checksum_mismatch", "size_mismatch"]
    found = next(r for r in rejected if r.data["reasons"][0]["code"] == "checksum_mismatch")
    assert artifact["sha256"] in found.data["reasons"][0]["message"]
    for version, sha in ((2, "1" * 64), (3, artifact["sha256"])):
        assert await stored(settings, f"s3://{settings.s3_bucket}/artifacts/{name}/{version}/{sha}") is None


async def test_a_copy_left_unchecked_at_the_key_is_not_trusted(settings: Settings, kafka: Kafka, ingest, db) -> None:
    """Ingest stopped between the server's copy and its check: other bytes sit at the version's
    key, with the server's checksum of those bytes. The registration copies the right ones over."""
    name = unique_name()
    body, decoy = os.urandom(LARGE), os.urandom(LARGE)
    artifact = await put_artifact(settings, f"inbox/{name}", body)
    await put_artifact(settings, f"inbox/{name}-decoy", decoy)
    key = f"artifacts/{name}/1/{artifact['sha256']}"
    async with ObjectStore(settings) as store:
        await store.copy_hashed(parse_s3_uri(f"s3://{settings.s3_bucket}/inbox/{name}-decoy"),
                                parse_s3_uri(f"s3://{settings.s3_bucket}/{key}"), None)
    await kafka.publish("model.registered", registered(name, artifact))
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    assert ingested.data["artifact"]["uri"] == f"s3://{settings.s3_bucket}/{key}"
    assert await stored_digest(settings, ingested.data["artifact"]["uri"]) == (artifact["sha256"], LARGE)


@pytest.mark.parametrize("uri,code", [
    ("http://example.com/model.pkl", "unsupported_scheme"),
    ("s3://not-allowed-bucket/model.pkl", "bucket_not_allowed"),
    ("s3://{bucket}/inbox/../secrets", "path_traversal"),
    ("file:///etc/passwd", "path_not_allowed"),
    ("s3://{bucket}/inbox/does-not-exist", "artifact_missing"),
])
async def test_artifact_uris_outside_the_allowed_places_are_refused(
        settings: Settings, kafka: Kafka, ingest, uri: str, code: str) -> None:
    name = unique_name()
    artifact = {"uri": uri.format(bucket=settings.s3_bucket), "sha256": "1" * 64, "size_bytes": 1}
    await kafka.publish("model.registered", registered(name, artifact))
    rejected = await kafka.wait_for("model.rejected", for_model(name))
    assert rejected[0].data["reasons"][0]["code"] == code


async def test_file_artifacts_under_an_allowed_root_only(tmp_path: Path, settings: Settings, kafka: Kafka,
                                                        ingest) -> None:
    """Files under MODELREG_ARTIFACT_ROOTS are taken; `..` and symlinks out of it are refused."""
    root = settings.artifact_root_paths[0]
    folder = root / unique_name("files")
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"file model")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    (folder / "escape.bin").symlink_to(outside)
    name = unique_name()
    sha = hashlib.sha256(b"file model").hexdigest()
    await kafka.publish("model.registered", registered(name, {"uri": f"file://{folder}/model.bin",
                                                             "sha256": sha, "size_bytes": 10}))
    ingested = await kafka.wait_for("model.ingested", for_model(name))
    assert ingested[0].data["artifact"]["uri"].endswith(f"/artifacts/{name}/1/{sha}")
    for uri, code in ((f"file://{folder}/../../outside.bin", "path_traversal"),
                      (f"file://{folder}/escape.bin", "symlink_escape")):
        other = unique_name()
        await kafka.publish("model.registered", registered(other, {"uri": uri, "sha256": sha, "size_bytes": 6}))
        rejected = await kafka.wait_for("model.rejected", for_model(other))
        assert rejected[0].data["reasons"][0]["code"] == code


async def test_poison_messages_go_to_the_dlq_and_consumption_goes_on(
        settings: Settings, kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    artifact = await put_artifact(settings, f"inbox/{name}", b"fine")
    bad_schema = registered(name, dict(artifact, sha256="not-a-digest"))
    wrong_type = registered(name, artifact)
    wrong_type["type"] = "model.ingested"
    poison = [
        (b"{not json", "not_json"),
        (b'{"hello": "world"}', "not_cloudevent"),
        (json.dumps(wrong_type).encode(), "unknown_type"),
        (json.dumps(bad_schema).encode(), "schema_violation"),
        (b"x" * (1024 * 1024 + 10), "too_large"),
    ]
    for value, _ in poison:
        await kafka.publish_raw("model.registered", value, key=name)
    await kafka.publish("model.registered", registered(name, artifact))

    await kafka.wait_for("model.ingested", for_model(name))
    letters = await kafka.wait_for("registry.dlq", lambda s: s.key == name, count=len(poison))
    assert sorted(s.data["error"]["kind"] for s in letters) == sorted(kind for _, kind in poison)
    for letter, (value, kind) in zip(sorted(letters, key=lambda s: s.data["offset"]), poison, strict=True):
        assert letter.data["original_topic"] == "model.registered"
        assert letter.data["service"] == "ingest"
        assert base64.b64decode(letter.data["payload_b64"]) == value, kind
    audits = await kafka.wait_for("registry.audit", lambda s: s.data["action"] == "dead_lettered"
                                  and s.data["name"] == name, count=len(poison))
    assert {a.data["evidence"]["offset"] for a in audits} == {s.data["offset"] for s in letters}
    count = await eventually(lambda: db.fetchval("SELECT count(*) FROM model_versions WHERE name = $1", name))
    assert count == 1


async def test_an_explicit_version_is_never_handed_out_to_a_versionless_registration(
        settings: Settings, kafka: Kafka, ingest, db) -> None:
    name = unique_name()
    a = await put_artifact(settings, f"inbox/{name}-a", b"model a")
    b = await put_artifact(settings, f"inbox/{name}-b", b"model b")
    await kafka.publish("model.registered", registered(name, a))
    await kafka.wait_for("model.ingested", for_model(name, 1))
    # back to back, likely in one batch: the explicit v2 and one the registry numbers
    await kafka.publish("model.registered", registered(name, b, version=2))
    await kafka.publish("model.registered", registered(name, a))
    await kafka.wait_for("model.ingested", for_model(name), count=3)
    rows = await db.fetch("SELECT version, sha256 FROM model_versions WHERE name = $1 ORDER BY version", name)
    assert [(r["version"], r["sha256"]) for r in rows] == [(1, a["sha256"]), (2, b["sha256"]), (3, a["sha256"])]
    assert not kafka.matching("model.rejected", for_model(name))
