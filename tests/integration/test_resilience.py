"""At scale and under failure: 500 versions at once, and services killed with SIGKILL
mid-stream. Every version must end where the policy puts it, exactly once."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka.errors import KafkaError

from bench.accounting import Expected, account_for
from bench.fleet import Fleet, wait_all_ready
from bench.soak import SoakPlan, remove_bucket, soak
from shared.broker import ensure_topics
from shared.db import migrate
from shared.events import TOPICS
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.conftest import Endpoints, _with_database
from tests.support import Kafka, cloudevent, eventually, kafka_env, put_artifact


async def answer_qa(kafka: Kafka, prefix: str, suite: str = "smoke") -> None:
    """A QA system for every model named `prefix*`: each qa.requested gets a passing result."""
    answered: set[tuple[str, int]] = set()
    while True:
        for seen in kafka.matching("qa.requested", lambda s: s.data["name"].startswith(prefix)):
            key = (seen.data["name"], seen.data["version"])
            if key not in answered:
                answered.add(key)
                event = cloudevent("metrics.evaluated", {
                    "name": key[0], "version": key[1], "suite": suite, "environment": "offline",
                    "metrics": {"accuracy": 0.9}, "passed": True}, source="qa/tests")
                event["correlationid"] = seen.event["correlationid"]
                try:
                    await kafka.publish("metrics.evaluated", event)
                except KafkaError:  # the cluster is away (a fault test): answer when it is back
                    answered.discard(key)
        await asyncio.sleep(0.05)


async def registrations(settings: Settings, names: list[str]) -> list[dict]:
    artifact = await put_artifact(settings, f"inbox/{uuid.uuid4().hex}", b"a small model")
    return [cloudevent("model.registered", {"name": name, "artifact": artifact}) for name in names]


async def test_500_versions_at_once_are_all_accounted_for(settings: Settings, kafka: Kafka, pipeline,
                                                          db: asyncpg.Pool) -> None:
    prefix = f"bulk-{uuid.uuid4().hex[:6]}-"
    names = [f"{prefix}{i % 50}" for i in range(500)]  # 50 models, 10 versions each
    qa = asyncio.create_task(answer_qa(kafka, prefix))
    try:
        for event in await registrations(settings, names):
            await kafka.producer.send(settings.topic("model.registered"), json.dumps(event).encode(),
                                      key=event["data"]["name"].encode())
        await kafka.producer.flush()
        def mine(s) -> bool:
            return bool(s.data.get("name", "").startswith(prefix))

        await kafka.wait_for("model.ingested", mine, count=500, timeout=120)
        await kafka.wait_for("model.validated", mine, count=500, timeout=120)
        # with the default rule (no champion to beat) every passing version takes production in turn
        decided = await eventually(lambda: db.fetchval(
            """SELECT count(DISTINCT (name, version)) = 500 FROM stage_history
               WHERE name LIKE $1 AND to_stage = 'production'""", prefix + "%"), timeout=120)
        assert decided
    finally:
        qa.cancel()

    assert await db.fetchval("SELECT count(*) FROM model_versions WHERE name LIKE $1 AND status = 'ingested'",
                             prefix + "%") == 500
    versions = await db.fetch("SELECT name, array_agg(version ORDER BY version) AS v FROM model_versions "
                              "WHERE name LIKE $1 GROUP BY name", prefix + "%")
    assert all(list(r["v"]) == list(range(1, 11)) for r in versions) and len(versions) == 50
    ingested = {(s.data["name"], s.data["version"]) for s in kafka.matching("model.ingested", mine)}
    assert len(ingested) == 500
    champions = await db.fetch("SELECT name, count(*) FROM promotion_versions WHERE name LIKE $1 "
                               "AND stage = 'production' GROUP BY name", prefix + "%")
    assert len(champions) == 50 and all(r["count"] == 1 for r in champions)
    audited = await eventually(lambda: db.fetchval(
        "SELECT count(DISTINCT (name, version)) = 500 FROM audit_log WHERE name LIKE $1 AND action = 'ingested'",
        prefix + "%"))
    assert audited


# -- SIGKILL ---------------------------------------------------------------------------------

@pytest.fixture
async def isolated(endpoints: Endpoints, settings: Settings) -> AsyncIterator[Settings]:
    """Its own database and topics: subprocess services here share nothing with the
    in-process ones the other tests run (outbox rows included)."""
    suffix = uuid.uuid4().hex[:6]
    database = f"modelreg_crash_{suffix}"
    admin = await asyncpg.connect(_with_database(endpoints.database_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    # A bucket of its own too: the audit writer's signed checkpoints there are checked against
    # this database's chain, which another database's checkpoints would contradict.
    mine = settings.model_copy(update={
        "database_url": settings.database_url.__class__(_with_database(settings.dsn, database)),
        "topic_prefix": f"{settings.topic_prefix}crash{suffix}.",
        "s3_bucket": f"modelreg-crash-{suffix}"})
    await migrate(mine.dsn)
    await ensure_topics(mine)
    async with ObjectStore(mine) as store:
        await store.ensure_bucket()
    yield mine
    await remove_bucket(mine)
    admin = await asyncpg.connect(_with_database(endpoints.database_url, "postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()


def _env(settings: Settings) -> dict[str, str]:
    return {**kafka_env(settings),
            "DATABASE_URL": settings.dsn, "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
            "S3_BUCKET": settings.s3_bucket,
            "AWS_ACCESS_KEY_ID": settings.aws_access_key_id.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key.get_secret_value(),
            "MODELREG_TOPIC_PREFIX": settings.topic_prefix,
            "MODELREG_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "MODELREG_POLICY_FILE": str(settings.policy_file),
            "MODELREG_KEYRING_FILE": str(settings.keyring_file),
            "MODELREG_SIGNING_KEY_FILE": str(settings.signing_key_file)}  # the run's keys directory


async def test_services_killed_mid_stream_lose_and_repeat_nothing(isolated: Settings) -> None:
    settings = isolated
    kafka = Kafka(settings)
    await kafka.start(TOPICS)
    fleet = Fleet(lambda _name: _env(settings))
    fleet.start_all()
    prefix = f"crash-{uuid.uuid4().hex[:6]}-"
    names = [f"{prefix}{i}" for i in range(60)]
    qa = asyncio.create_task(answer_qa(kafka, prefix))
    pool = await asyncpg.create_pool(settings.dsn, min_size=1, max_size=2)
    try:
        events = await registrations(settings, names)
        for event in events[:30]:
            await kafka.publish("model.registered", event)
        await kafka.wait_for("model.ingested", lambda s: s.data["name"].startswith(prefix), count=5, timeout=60)
        fleet.kill("ingest")          # mid-stream: some ingested, some not
        fleet.kill("promotion")
        for event in events[30:]:
            await kafka.publish("model.registered", event)
        await asyncio.sleep(1)
        fleet.start("ingest")
        fleet.start("promotion")
        await kafka.wait_for("model.promoted", lambda s: s.data["name"].startswith(prefix)
                             and s.data["to_stage"] == "production", count=20, timeout=90)
        fleet.kill("promotion")       # again, while promoting
        fleet.kill("audit")
        time.sleep(0.5)
        fleet.start("promotion")
        fleet.start("audit")

        # Every version in production once, audited once, lag drained, audit chain and replay clean.
        end = await account_for(fleet, settings, pool, Expected(prefix, dict.fromkeys(names, 1)),
                                {**os.environ, **_env(settings)}, timeout=150)
        end.require()
        # Each decision was published under one event id (a crash may re-send it, never re-decide it).
        def mine(s) -> bool:
            return bool(s.data["name"].startswith(prefix))

        decisions = collections.defaultdict(set)
        for seen in kafka.matching("model.promoted", mine):
            decisions[(seen.data["name"], seen.data["version"], seen.data["to_stage"])].add(seen.event["id"])
        assert len(decisions) == 120 and all(len(ids) == 1 for ids in decisions.values())
        ingested = collections.defaultdict(set)
        for seen in kafka.matching("model.ingested", mine):
            ingested[(seen.data["name"], seen.data["version"])].add(seen.event["id"])
        assert len(ingested) == 60 and all(len(ids) == 1 for ids in ingested.values())
    finally:
        qa.cancel()
        fleet.stop()
        await pool.close()
        await kafka.stop()


@pytest.mark.slow  # two minutes of flow and kills, then the accounting: `make test-slow`
async def test_a_two_minute_soak_of_random_sigkills_loses_and_repeats_nothing(isolated: Settings) -> None:
    """The benchmark's soak (bench/soak.py), shortened: registrations and QA results flow while
    a random service is SIGKILLed every 8-20 s and started again; afterwards every version is
    where its QA result puts it (production once, or staging when it failed), each decision
    audited once, lag drained, audit chain and replay clean."""
    fleet = Fleet(lambda _name: _env(isolated))
    fleet.start_all()
    plan = SoakPlan(seconds=120, kill_every=(8, 20), down_for=(0, 3), settle_timeout=420)
    try:
        await wait_all_ready(fleet)
        result = await soak(isolated, fleet, {**os.environ, **_env(isolated)}, plan, f"soak-{uuid.uuid4().hex[:6]}-",
                            print)
    finally:
        fleet.stop()
    assert result["problems"] == []
    # The seeded draw kills at least four times in 120 s; three allow for sleeps overrunning on a busy machine.
    assert result["kills"] >= 3 and sum(result["kills_by_service"].values()) == result["kills"]
    assert result["failing_qa_kept_in_staging"] > 0 and result["versions"] > plan.models
