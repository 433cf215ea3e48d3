"""Stage changes the policy and people make, through the running services: staging versions
past their age and rejected versions past their grace period archived by the sweep, a
rollback with nothing to restore, `auto_staging: false`, and manual moves to every stage.
Rules from tests/policy.yaml: `expire-*` (staging_max_age 2s), `life-*` (rejected_grace 2s,
rollback on auc), `manual-*` (auto_staging false, approvers alice and bob)."""

from __future__ import annotations

import asyncio
import pickle
from datetime import datetime, timedelta

import asyncpg

from services.archival.cold import TAGGING
from shared.settings import Settings
from shared.storage import ObjectStore, parse_s3_uri
from tests.integration.test_pipeline import QA, audit_of, evaluated, promoted, register, registered, requested
from tests.support import Kafka, Seen, eventually, for_model, put_artifact, unique_name


def _time(seen: Seen) -> datetime:
    return datetime.fromisoformat(seen.event["time"].replace("Z", "+00:00"))


async def _in_cold_storage(settings: Settings, db: asyncpg.Pool, name: str, version: int) -> None:
    """The artifact moved under `archive/`, tagged, and gone from where it was."""
    row = await db.fetchrow("SELECT artifact_uri, archive_uri FROM archival_versions WHERE name = $1 AND version = $2",
                            name, version)
    target, source = parse_s3_uri(row["archive_uri"]), parse_s3_uri(row["artifact_uri"])
    assert target.key == "archive/" + source.key
    async with ObjectStore(settings) as store:
        assert await store.head(target) is not None and await store.head(source) is None
        tags = await (await store.boto()).get_object_tagging(Bucket=target.bucket, Key=target.key)
    key, value = TAGGING.split("=")
    assert {"Key": key, "Value": value} in tags["TagSet"]


async def test_a_version_in_staging_past_its_max_age_is_archived_as_expired(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    name = unique_name("expire")
    await register(settings, kafka, name, 1)  # no QA answers: it stays in staging
    staged = (await kafka.wait_for("model.promoted", promoted(name, 1, "staging", "policy")))[0]
    archived = (await kafka.wait_for("model.archived", for_model(name, 1), timeout=30))[0]
    assert (archived.data["reason"], archived.data["from_stage"], archived.data["restorable"]) == \
        ("expired", "staging", True)
    assert _time(archived) - _time(staged) >= timedelta(seconds=2)  # staging_max_age, not sooner
    await _in_cold_storage(settings, db, name, 1)
    # promotion learns of it: the version is archived there too
    assert await eventually(lambda: db.fetchval(
        "SELECT stage = 'archived' FROM promotion_versions WHERE name = $1 AND version = 1", name))


async def test_expiry_is_not_starved_by_versions_another_rule_keeps(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    """Hundreds of older staging versions that the default rule keeps for 30 days are
    candidates for the sweep (older than the shortest max age) but never due: the one
    `expire-*` version that is due is archived all the same."""
    idle = unique_name("idle")
    await db.execute(
        """INSERT INTO archival_versions (name, version, stage, staged_at, stage_event_time)
           SELECT $1 || '-' || n, 1, 'staging', now() - interval '1 hour', now() - interval '1 hour'
           FROM generate_series(1, 250) AS n""", idle)
    try:
        name = unique_name("expire")
        await register(settings, kafka, name, 1)
        await kafka.wait_for("model.promoted", promoted(name, 1, "staging", "policy"))
        archived = (await kafka.wait_for("model.archived", for_model(name, 1), timeout=30))[0]
        assert archived.data["reason"] == "expired"
        assert await db.fetchval("SELECT count(*) FROM archival_versions WHERE name LIKE $1 || '-%' "
                                 "AND archived_at IS NULL", idle) == 250  # kept: their rule says 30 days
    finally:
        await db.execute("DELETE FROM archival_versions WHERE name LIKE $1 || '-%'", idle)


async def test_a_rejected_version_is_archived_by_the_sweep_after_its_grace_period(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (eval, ("1+1",))

    name = unique_name("life")
    artifact = await put_artifact(settings, f"inbox/{name}/evil.pkl", pickle.dumps(Exploit()))
    await kafka.publish("model.registered", registered(name, artifact))
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    archived = (await kafka.wait_for("model.archived", for_model(name, 1), timeout=30))[0]
    assert (archived.data["reason"], archived.data["restorable"]) == ("rejected", False)
    assert _time(archived) - _time(rejected) >= timedelta(seconds=2)  # rejected_grace, not sooner
    await _in_cold_storage(settings, db, name, 1)
    audit = (await kafka.wait_for("registry.audit", audit_of(name, "archived", 1)))[0]
    assert audit.data["actor"] and audit.data["reason"] == "rejected"


async def test_a_rollback_with_no_earlier_version_leaves_the_model_without_a_champion(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    name = unique_name("life")
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.95}}).run())
    try:
        await register(settings, kafka, name, 1)
        await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy"))
    finally:
        qa.cancel()
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.70}, suite="live-monitor",
                                                       environment="production"))
    demoted = (await kafka.wait_for("model.demoted", for_model(name, 1)))[0]
    assert (demoted.data["reason"], demoted.data["from_stage"], demoted.data["to_stage"]) == \
        ("rollback", "production", "none")
    # the decision not to restore is recorded in the same transaction as the demotion
    record = (await kafka.wait_for("registry.audit", audit_of(name, "rollback_without_restore", 1)))[0]
    assert "no earlier version is restorable" in record.data["reason"]
    assert record.data["evidence"]["broken"][0]["metric"] == "auc"
    assert not kafka.matching("model.promoted", lambda s: for_model(name)(s) and s.data["reason"] == "rollback")
    stages = await db.fetch("SELECT version, stage, blocked FROM promotion_versions WHERE name = $1", name)
    assert [(r["version"], r["stage"], r["blocked"]) for r in stages] == [(1, "none", "rolled_back")]


async def test_a_rollback_target_whose_bytes_were_altered_is_quarantined_and_the_model_says_it_has_no_champion(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    """A rollback restores only bytes that are still the registered ones: the superseded
    champion's artifact, swapped in S3, is quarantined instead of crowned, and the record says
    that the model is left without a champion (before, it was left so silently)."""
    name = unique_name("life")
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.95}, 2: {"auc": 0.97}}).run())
    try:
        await register(settings, kafka, name, 1)
        await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy"))
        await register(settings, kafka, name, 2)
        await kafka.wait_for("model.promoted", promoted(name, 2, "production", "policy"))
    finally:
        qa.cancel()
    first = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    location = parse_s3_uri(first.data["artifact"]["uri"])
    async with ObjectStore(settings) as store:
        await (await store.boto()).put_object(
            Bucket=location.bucket, Key=location.key, Body=b"swapped while superseded")
    await kafka.publish("metrics.evaluated", evaluated(name, 2, {"auc": 0.70}, suite="live-monitor",
                                                       environment="production"))
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    assert rejected.data["reasons"][0]["code"] == "checksum_mismatch"
    record = (await kafka.wait_for("registry.audit", audit_of(name, "rollback_without_restore", 2)))[0]
    assert "no earlier version is restorable" in record.data["reason"]
    assert (await kafka.wait_for("registry.audit", audit_of(name, "quarantined", 1)))
    assert not kafka.matching("model.promoted", lambda s: for_model(name)(s) and s.data["reason"] == "rollback")
    stages = await db.fetch("SELECT version, stage, blocked FROM promotion_versions WHERE name = $1 ORDER BY version",
                            name)
    assert [(r["version"], r["stage"], r["blocked"]) for r in stages] == [
        (1, "none", "quarantined"), (2, "none", "rolled_back")]


async def test_without_auto_staging_a_validated_version_waits_for_a_person(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    name = unique_name("manual")
    await register(settings, kafka, name, 1)
    await kafka.wait_for("model.validated", for_model(name, 1))
    await kafka.publish("promotion.requested", requested(name, 1, "staging", "bob"))
    # bob's request finds the version still in `none`: the policy did not move it first
    staged = await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    assert [(s.data["from_stage"], s.data["reason"]) for s in staged] == [("none", "manual")]
    audit = (await kafka.wait_for("registry.audit", lambda s: audit_of(name, "promoted", 1)(s)))[0]
    assert audit.data["actor"] == "bob"


async def test_manual_moves_reach_every_stage_and_an_archived_version_stays_archived(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    name = unique_name("manual")
    await register(settings, kafka, name, 1)
    await kafka.wait_for("model.validated", for_model(name, 1))
    path = [("staging", "model.promoted", "none"), ("production", "model.promoted", "staging"),
            ("staging", "model.demoted", "production"), ("none", "model.demoted", "staging"),
            ("archived", "model.demoted", "none")]
    for count, (to_stage, topic, from_stage) in enumerate(path, start=1):
        actor = "bob" if count % 2 else "alice"
        await kafka.publish("promotion.requested", requested(name, 1, to_stage, actor))
        moves = await kafka.wait_for(topic, lambda s, to_stage=to_stage, from_stage=from_stage:
                                     for_model(name, 1)(s) and s.data["to_stage"] == to_stage
                                     and s.data["from_stage"] == from_stage)
        assert moves[0].data["reason"] == "manual", moves[0].data
        assert moves[0].data["evidence"]["requested_by"] == actor
    archived = (await kafka.wait_for("model.archived", for_model(name, 1)))[0]
    assert (archived.data["reason"], archived.data["from_stage"], archived.data["restorable"]) == \
        ("manual", "none", True)
    await _in_cold_storage(settings, db, name, 1)
    assert await eventually(lambda: db.fetchval(
        "SELECT stage = 'archived' FROM promotion_versions WHERE name = $1 AND version = 1", name))
    # Restoring it is not possible by a promotion request: refused, with the reason
    await kafka.publish("promotion.requested", requested(name, 1, "production", "bob"))
    refused = (await kafka.wait_for("registry.audit", audit_of(name, "promotion_refused", 1)))[0]
    assert "archived" in refused.data["reason"]


async def test_an_approver_restores_an_archived_version_which_can_then_move_up_again(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    name = unique_name("manual")
    await register(settings, kafka, name, 1)
    await kafka.wait_for("model.validated", for_model(name, 1))
    await kafka.publish("promotion.requested", requested(name, 1, "archived", "bob"))
    await kafka.wait_for("model.archived", for_model(name, 1))
    await _in_cold_storage(settings, db, name, 1)
    row = await db.fetchrow("SELECT artifact_uri, archive_uri FROM archival_versions WHERE name = $1 AND version = 1",
                            name)

    # Someone who is no approver asks first: refused by archival, with the reason; nothing moves.
    await kafka.publish("promotion.requested", requested(name, 1, "none", "mallory"))
    refused = (await kafka.wait_for("registry.audit", audit_of(name, "restore_refused", 1)))[0]
    assert "not an approver" in refused.data["reason"] and refused.data["actor"] == "mallory"
    assert not kafka.matching("model.restored", for_model(name, 1))

    await kafka.publish("promotion.requested", requested(name, 1, "none", "alice"))
    restored = (await kafka.wait_for("model.restored", for_model(name, 1)))[0]
    assert (restored.data["actor"], restored.data["artifact_uri"]) == ("alice", row["artifact_uri"])
    assert restored.event["source"] == "modelreg/archival" and restored.event["signingkey"]
    record = (await kafka.wait_for("registry.audit", audit_of(name, "restored", 1)))[0]
    assert (record.data["from_stage"], record.data["to_stage"], record.data["actor"]) == ("archived", "none", "alice")
    # The bytes are back where they were, untagged, and the archive copy is gone.
    async with ObjectStore(settings) as store:
        back, cold = parse_s3_uri(row["artifact_uri"]), parse_s3_uri(row["archive_uri"])
        assert await store.head(back) is not None and await store.head(cold) is None
        assert (await (await store.boto()).get_object_tagging(Bucket=back.bucket, Key=back.key))["TagSet"] == []
    # Every service that keeps a stage agrees it is `none` now, and the read model shows no archive copy.
    assert await eventually(lambda: db.fetchval(
        "SELECT stage = 'none' FROM promotion_versions WHERE name = $1 AND version = 1", name))
    assert await db.fetchval("SELECT stage = 'none' AND archived_at IS NULL FROM archival_versions "
                             "WHERE name = $1 AND version = 1", name)
    assert await eventually(lambda: db.fetchval(
        "SELECT stage = 'none' AND archive_uri IS NULL FROM view_versions WHERE name = $1 AND version = 1", name))

    # And it moves up like any version: the integrity check finds the restored bytes intact.
    await kafka.publish("promotion.requested", requested(name, 1, "production", "bob"))
    crowned = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "manual")))[0]
    assert crowned.data["from_stage"] == "none"
    assert not kafka.matching("model.rejected", for_model(name, 1))


async def test_a_rejected_version_cannot_be_restored(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (eval, ("1+1",))

    name = unique_name("manual")
    artifact = await put_artifact(settings, f"inbox/{name}/evil.pkl", pickle.dumps(Exploit()))
    await kafka.publish("model.registered", registered(name, artifact))
    await kafka.wait_for("model.rejected", for_model(name, 1))
    await kafka.publish("promotion.requested", requested(name, 1, "archived", "bob"))
    await kafka.wait_for("model.archived", for_model(name, 1))
    await kafka.publish("promotion.requested", requested(name, 1, "none", "alice"))
    refused = (await kafka.wait_for("registry.audit", audit_of(name, "restore_refused", 1)))[0]
    assert "rejected" in refused.data["reason"]
    assert await db.fetchval("SELECT archived_at IS NOT NULL FROM archival_versions WHERE name = $1 AND version = 1",
                             name)
    assert not kafka.matching("model.restored", for_model(name, 1))
