"""A model's whole life on the real stack, played with plain Kafka producers (raw CloudEvents
JSON, not the SDK): registration to production, a better champion, a worse candidate, a
rollback; approvals, a malicious pickle, a tampered artifact, archival."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY

from shared.settings import Settings
from shared.storage import PART_SIZE, ObjectStore, parse_s3_uri
from tests.support import Kafka, Seen, cloudevent, eventually, for_model, put_artifact, unique_name


def registered(name: str, artifact: dict, registered_by: str = "pipelines/train", fmt: str = "pickle") -> dict:
    return cloudevent("model.registered", {"name": name, "artifact": dict(artifact, format=fmt),
                                           "registered_by": registered_by, "metrics": {"auc": 0.9}})


def evaluated(name: str, version: int, metrics: dict, *, suite: str = "offline-eval",
              environment: str = "offline", passed: bool = True) -> dict:
    return cloudevent("metrics.evaluated", {"name": name, "version": version, "suite": suite,
                                            "environment": environment, "metrics": metrics, "passed": passed,
                                            "evaluator": "tests/qa"}, source="qa/tests")


def requested(name: str, version: int, to_stage: str, actor: str) -> dict:
    return cloudevent("promotion.requested", {"name": name, "version": version, "to_stage": to_stage,
                                              "actor": actor, "reason": "integration test"}, source="ops/tests")


def promoted(name: str, version: int, to_stage: str, reason: str | None = None) -> Callable[[Seen], bool]:
    return lambda s: (for_model(name, version)(s) and s.data["to_stage"] == to_stage
                      and (reason is None or s.data["reason"] == reason))


def audit_of(name: str, action: str, version: int | None = None) -> Callable[[Seen], bool]:
    return lambda s: for_model(name, version)(s) and s.data["action"] == action


class QA:
    """A QA system: answers `qa.requested` with the metrics scripted for each version."""

    def __init__(self, kafka: Kafka, name: str, scores: dict[int, dict[str, float]]) -> None:
        self.kafka, self.name, self.scores = kafka, name, scores
        self.answered: set[int] = set()

    async def run(self) -> None:
        while True:
            for seen in self.kafka.matching("qa.requested", for_model(self.name)):
                version = seen.data["version"]
                if version in self.scores and version not in self.answered:
                    assert seen.data["suites"] == ["offline-eval"]
                    self.answered.add(version)
                    event = evaluated(self.name, version, self.scores[version])
                    event["correlationid"] = seen.event["correlationid"]
                    await self.kafka.publish("metrics.evaluated", event)
            await asyncio.sleep(0.05)


@pytest.fixture
async def qa(kafka: Kafka) -> AsyncIterator[Callable[[str, dict[int, dict[str, float]]], QA]]:
    tasks = []

    def start(name: str, scores: dict[int, dict[str, float]]) -> QA:
        responder = QA(kafka, name, scores)
        tasks.append(asyncio.create_task(responder.run()))
        return responder

    yield start
    for task in tasks:
        task.cancel()


def safe_pickle(seed: int) -> bytes:
    return pickle.dumps({"weights": [seed * 0.1, 0.2], "bias": seed})


async def register(settings: Settings, kafka: Kafka, name: str, seed: int, **kwargs) -> dict:
    artifact = await put_artifact(settings, f"inbox/{name}/{seed}.pkl", safe_pickle(seed))
    event = registered(name, artifact, **kwargs)
    await kafka.publish("model.registered", event)
    return event


async def test_a_models_life(settings: Settings, kafka: Kafka, pipeline, db, qa) -> None:
    name = unique_name("life")
    qa(name, {1: {"auc": 0.92}, 2: {"auc": 0.95}, 3: {"auc": 0.93}})

    # v1: registered -> ingested -> validated -> staging; QA results -> production
    v1 = await register(settings, kafka, name, 1)
    await kafka.wait_for("model.ingested", for_model(name, 1))
    validated = await kafka.wait_for("model.validated", for_model(name, 1))
    assert {c["name"] for c in validated[0].data["checks"]} >= {"artifact_present", "checksum", "pickle_safety"}
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging", "policy"))
    first = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy")))[0]
    assert first.data["from_stage"] == "staging" and first.data.get("previous_champion") is None
    assert first.data["policy_revision"].startswith("sha256:")
    gates = {g["gate"]: g for g in first.data["evidence"]["gates"]}
    assert gates["threshold:auc"]["passed"] and gates["suite:offline-eval"]["passed"]

    # v2, better: production; v1 demoted (superseded)
    v2 = await register(settings, kafka, name, 2)
    second = (await kafka.wait_for("model.promoted", promoted(name, 2, "production", "policy")))[0]
    assert second.data["previous_champion"] == 1
    champion_gate = {g["gate"]: g for g in second.data["evidence"]["gates"]}["champion:auc"]
    assert champion_gate["candidate"] == 0.95 and champion_gate["champion"] == 0.92
    demoted = (await kafka.wait_for("model.demoted", for_model(name, 1)))[0]
    assert (demoted.data["from_stage"], demoted.data["to_stage"], demoted.data["reason"]) == \
        ("production", "none", "superseded")

    # v3, worse than the champion by more than min_improvement allows: stays in staging
    v3 = await register(settings, kafka, name, 3)
    await kafka.wait_for("model.promoted", promoted(name, 3, "staging"))
    held = await kafka.wait_for("registry.audit", lambda s: audit_of(name, "held", 3)(s)
                                and "champion" in s.data["reason"])
    assert "does not beat" in held[-1].data["reason"]

    # production metrics for v2 degrade: rollback to v1
    await kafka.publish("metrics.evaluated", evaluated(name, 2, {"auc": 0.80}, suite="live-monitor",
                                                       environment="production"))
    rolled = (await kafka.wait_for("model.demoted", lambda s: for_model(name, 2)(s)
                                   and s.data["reason"] == "rollback"))[0]
    assert rolled.data["evidence"]["broken"][0]["metric"] == "auc"
    restored = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "rollback")))[0]
    assert restored.data["from_stage"] == "none" and restored.data["previous_champion"] == 2

    assert not kafka.matching("model.promoted", promoted(name, 3, "production"))
    stages = {r["version"]: r["stage"] for r in await db.fetch(
        "SELECT version, stage FROM promotion_versions WHERE name = $1", name)}
    assert stages == {1: "production", 2: "none", 3: "staging"}

    # every step is on registry.audit, one correlation id per version's life
    audits = kafka.matching("registry.audit", for_model(name))
    for version, start in ((1, v1), (2, v2), (3, v3)):
        mine = [a for a in audits if a.data.get("version") == version]
        assert {a.event["correlationid"] for a in mine} == {start["id"]}, version
    actions = [a.data["action"] for a in audits if a.data.get("version") == 1]
    for expected in ("ingested", "validated", "promoted", "demoted"):
        assert expected in actions

    # the registry view (what the API reads) is projected from the audit records alone
    await eventually(lambda: db.fetchval("SELECT champion = 1 FROM view_models WHERE name = $1", name))
    view = await db.fetch("SELECT version, stage, status FROM view_versions WHERE name = $1 ORDER BY version", name)
    assert [(r["version"], r["stage"], r["status"]) for r in view] == [
        (1, "production", "validated"), (2, "none", "validated"), (3, "staging", "validated")]
    moves = await db.fetch("SELECT version, from_stage, to_stage, reason FROM view_stage_changes "
                           "WHERE name = $1 ORDER BY seq", name)
    assert [tuple(m) for m in moves][-2:] == [(2, "production", "none", "rollback"),
                                              (1, "none", "production", "rollback")]
    evaluations = await db.fetchval("SELECT count(*) FROM view_evaluations WHERE name = $1", name)
    assert evaluations == 4  # three QA results and the production monitor's
    metadata = await db.fetchrow("SELECT sha256, artifact_uri, registered_by, metrics FROM view_versions "
                                 "WHERE name = $1 AND version = 1", name)
    assert metadata["sha256"] and metadata["artifact_uri"].startswith("s3://")
    assert metadata["registered_by"] == "pipelines/train" and metadata["metrics"] == {"auc": 0.9}

    # the audit writer stored them in a hash chain that verifies, until a row is altered
    from services.audit import store as audit_store

    count = len(audits)
    await eventually(lambda: db.fetchval("SELECT count(*) >= $2 FROM audit_log WHERE name = $1", name, count))
    async with db.acquire() as conn:
        assert not (await audit_store.verify(conn)).problems
        seq, actor = await conn.fetchrow("SELECT seq, actor FROM audit_log WHERE name = $1 ORDER BY seq LIMIT 1",
                                         name)
        # as a database superuser could: with the append-only trigger switched off
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = $1", seq)
        try:
            problems = (await audit_store.verify(conn)).problems
            assert [p.seq for p in problems] == [seq]
        finally:  # put it back, so later tests find the chain intact
            await conn.execute("UPDATE audit_log SET actor = $2 WHERE seq = $1", seq, actor)
            await conn.execute("RESET session_replication_role")
        assert not (await audit_store.verify(conn)).problems


async def test_manual_promotion_needs_distinct_approvers_and_not_the_author(
        settings: Settings, kafka: Kafka, pipeline, qa) -> None:
    name = unique_name("life")
    qa(name, {1: {"auc": 0.50}})  # far below the threshold: policy never promotes it
    await register(settings, kafka, name, 1, registered_by="alice")
    await kafka.wait_for("registry.audit", lambda s: audit_of(name, "held", 1)(s) and "auc" in s.data["reason"])

    for actor in ("mallory", "alice"):  # not an approver; the author herself
        await kafka.publish("promotion.requested", requested(name, 1, "production", actor))
    refusals = await kafka.wait_for("registry.audit", audit_of(name, "promotion_refused", 1), count=2)
    assert {r.data["actor"] for r in refusals} == {"mallory", "alice"}
    assert any("separation of duties" in r.data["reason"] for r in refusals)

    await kafka.publish("promotion.requested", requested(name, 1, "production", "bob"))
    pending = await kafka.wait_for("registry.audit", audit_of(name, "approval_recorded", 1))
    assert pending[0].data["evidence"]["approvers"] == ["bob"]
    await kafka.publish("promotion.requested", requested(name, 1, "production", "bob"))  # bob again: no
    await kafka.publish("promotion.requested", requested(name, 1, "production", "carol"))
    manual = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "manual")))[0]
    assert manual.data["evidence"]["approvers"] == ["bob", "carol"]
    audit = await kafka.wait_for("registry.audit", lambda s: audit_of(name, "promoted", 1)(s)
                                 and s.data["to_stage"] == "production")
    assert audit[0].data["actor"] == "carol"


async def test_a_malicious_pickle_is_rejected_naming_its_imports(settings: Settings, kafka: Kafka, pipeline) -> None:
    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned",))

    name = unique_name("life")
    artifact = await put_artifact(settings, f"inbox/{name}/evil.pkl", pickle.dumps(Exploit()))
    await kafka.publish("model.registered", registered(name, artifact))
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    reason = rejected.data["reasons"][0]
    assert reason["code"] == "unsafe_pickle"
    assert "posix.system" in reason["message"], reason  # os.system, as CPython pickles it on POSIX
    assert not kafka.matching("model.validated", for_model(name))


async def test_a_tampered_artifact_is_quarantined_before_production(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    name = unique_name("life")
    await register(settings, kafka, name, 1)
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    location = parse_s3_uri(ingested.data["artifact"]["uri"])
    async with ObjectStore(settings) as store:
        await (await store.boto()).put_object(
            Bucket=location.bucket, Key=location.key, Body=b"swapped after validation")
    redone = promotion_io_rounds()
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.99}))
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    assert rejected.data["reasons"][0]["code"] == "checksum_mismatch"
    # A QA result is foreseen: its version was checked before the batch's transaction opened.
    assert promotion_io_rounds() == redone
    quarantined = (await kafka.wait_for("registry.audit", audit_of(name, "quarantined", 1)))[0]
    assert quarantined.data["evidence"]["expected_sha256"] == ingested.data["artifact"]["sha256"]
    assert quarantined.data["evidence"]["found_sha256"] not in (None, ingested.data["artifact"]["sha256"])
    assert not kafka.matching("model.promoted", promoted(name, 1, "production"))


async def test_a_qa_result_ahead_of_its_version_is_crowned_without_a_redone_batch(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    """A QA result that reaches promotion before its version does waits for it; the version's
    registration or validation then crowns it at once, and promotion checked the artifact
    before that batch's transaction opened (prepare foresaw it) instead of redoing the batch."""
    name = unique_name("life")
    redone = promotion_io_rounds()
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.99}))
    await register(settings, kafka, name, 1)
    crowned = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy")))[0]
    assert crowned.data["from_stage"] == "staging"
    assert promotion_io_rounds() == redone


def promotion_io_rounds() -> float:
    """Promotion's batch transactions redone for I/O a handler asked for (shared.metrics.IO_ROUNDS)."""
    return REGISTRY.get_sample_value("modelreg_batch_io_rounds_total", {"service": "promotion"}) or 0.0


def _safetensors(total: int) -> bytes:
    """A valid safetensors file of `total` bytes: one uint8 tensor filling what the header leaves."""
    data = total
    for _ in range(3):
        header = json.dumps({"w": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}}).encode()
        header += b" " * (-len(header) % 8)
        data = total - 8 - len(header)
    return len(header).to_bytes(8, "little") + header + os.urandom(data)


async def test_a_large_artifact_is_held_to_the_checksum_the_s3_server_keeps(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    """Ingest lets the S3 server copy an artifact of several parts, and the server keeps the
    copy's SHA-256; the integrity check before production reads that instead of the bytes. An
    intact one is crowned; one overwritten by a copy of other bytes (which brings the other
    bytes' checksum along) is quarantined."""
    intact, tampered = unique_name("life"), unique_name("life")
    size = PART_SIZE + 1024 * 1024
    for name in (intact, tampered):
        artifact = await put_artifact(settings, f"inbox/{name}/model.safetensors", _safetensors(size))
        await kafka.publish("model.registered", registered(name, artifact, fmt="safetensors"))
    stored = {}
    for name in (intact, tampered):
        stored[name] = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0].data["artifact"]
        await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    decoy = await put_artifact(settings, f"inbox/{tampered}/decoy.safetensors", _safetensors(size))
    async with ObjectStore(settings) as store:
        await store.copy_hashed(parse_s3_uri(decoy["uri"]), parse_s3_uri(stored[tampered]["uri"]), None)
    for name in (intact, tampered):
        await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.99}))
    await kafka.wait_for("model.promoted", promoted(intact, 1, "production"))
    quarantined = (await kafka.wait_for("registry.audit", audit_of(tampered, "quarantined", 1)))[0]
    assert quarantined.data["evidence"]["found_sha256"] == decoy["sha256"] != stored[tampered]["sha256"]
    assert not kafka.matching("model.promoted", promoted(tampered, 1, "production"))


async def test_superseded_and_rejected_versions_are_archived(settings: Settings, kafka: Kafka, pipeline,
                                                            db, qa) -> None:
    name = unique_name("life")
    qa(name, {1: {"auc": 0.91}, 2: {"auc": 0.93}, 3: {"auc": 0.95}})
    for seed in (1, 2, 3):
        await register(settings, kafka, name, seed)
        await kafka.wait_for("model.promoted", promoted(name, seed, "production"))
    # keep_restorable is 1: v2 waits as the rollback target, v1 goes to cold storage
    archived = (await kafka.wait_for("model.archived", for_model(name, 1)))[0]
    assert (archived.data["reason"], archived.data["restorable"], archived.data["from_stage"]) == \
        ("superseded", True, "none")
    row = await db.fetchrow("SELECT archive_uri FROM archival_versions WHERE name = $1 AND version = 1", name)
    location = parse_s3_uri(row["archive_uri"])
    assert location.key.startswith(f"archive/artifacts/{name}/1/")
    async with ObjectStore(settings) as store:
        tags = await (await store.boto()).get_object_tagging(Bucket=location.bucket, Key=location.key)
        assert {"Key": "modelreg-stage", "Value": "archived"} in tags["TagSet"]
        original = parse_s3_uri(row["archive_uri"].replace("/archive/", "/", 1))
        assert await store.head(original) is None
    stage = await eventually(lambda: db.fetchval(
        "SELECT stage FROM promotion_versions WHERE name = $1 AND version = 1 AND stage = 'archived'", name))
    assert stage == "archived"

    # a rejected version is archived by the sweep once its grace period (2s) has passed
    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (eval, ("1+1",))

    artifact = await put_artifact(settings, f"inbox/{name}/evil.pkl", pickle.dumps(Exploit()))
    await kafka.publish("model.registered", registered(name, artifact))
    await kafka.wait_for("model.rejected", for_model(name, 4))
    swept = (await kafka.wait_for("model.archived", for_model(name, 4), timeout=30))[0]
    assert swept.data["reason"] == "rejected" and swept.data["restorable"] is False
    # v2 stays restorable: archival has since archived v4 (and v1 long before), never v2
    assert not kafka.matching("model.archived", for_model(name, 2))


async def test_events_about_unknown_versions_are_dead_lettered(settings: Settings, kafka: Kafka, pipeline) -> None:
    """After the grace period for events that overtook their version on another topic."""
    name = unique_name("life")
    await kafka.publish("metrics.evaluated", evaluated(name, 99, {"auc": 0.99}))
    await kafka.publish("promotion.requested", requested(name, 99, "production", "bob"))
    letters = await kafka.wait_for("registry.dlq", lambda s: s.key == name, count=2, timeout=30)
    assert {s.data["error"]["kind"] for s in letters} == {"unknown_version"}
    assert {s.data["original_topic"] for s in letters} == {"metrics.evaluated", "promotion.requested"}
    await kafka.wait_for("registry.audit", audit_of(name, "dead_lettered", 99), count=2)


async def test_an_event_that_overtakes_its_version_is_applied_when_the_version_arrives(
        settings: Settings, kafka: Kafka, pipeline, db) -> None:
    """QA results published before the registration itself: held, then applied in order."""
    name = unique_name("life")
    early = evaluated(name, 1, {"auc": 0.97})
    await kafka.publish("metrics.evaluated", early)
    # it really came first: promotion holds it, waiting for a version it has not seen
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM promotion_deferred WHERE name = $1 "
                                         "AND event_id = $2", name, uuid.UUID(early["id"])))
    await register(settings, kafka, name, 1)
    done = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy")))[0]
    assert {g["gate"] for g in done.data["evidence"]["gates"]} >= {"threshold:auc", "suite:offline-eval"}
    # No dead letter for it, checked after the grace period: an event about a version that
    # never comes, held after it, is dead-lettered first; the early one would have gone before.
    await kafka.publish("metrics.evaluated", evaluated(name, 99, {"auc": 0.97}))
    await kafka.wait_for("registry.dlq", lambda s: s.key == name, timeout=30)
    letters = kafka.matching("registry.dlq", lambda s: s.key == name)
    assert [json.loads(base64.b64decode(s.data["payload_b64"]))["data"]["version"] for s in letters] == [99]
