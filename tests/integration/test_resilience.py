"""At scale and under failure: 500 versions at once, and services killed with SIGKILL
mid-stream. Every version must end where the policy puts it, exactly once."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.broker import ensure_topics
from shared.db import migrate
from shared.events import TOPICS
from shared.settings import Settings
from tests.conftest import Endpoints, _with_database
from tests.support import Kafka, cloudevent, eventually, kafka_env, put_artifact

SERVICES = ("ingest", "validation", "promotion", "archival", "audit")


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
                await kafka.publish("metrics.evaluated", event)
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
    mine = settings.model_copy(update={
        "database_url": settings.database_url.__class__(_with_database(settings.dsn, database)),
        "topic_prefix": f"{settings.topic_prefix}crash{suffix}."})
    await migrate(mine.dsn)
    await ensure_topics(mine)
    yield mine
    admin = await asyncpg.connect(_with_database(endpoints.database_url, "postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **kafka_env(settings),
            "DATABASE_URL": settings.dsn, "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
            "S3_BUCKET": settings.s3_bucket,
            "AWS_ACCESS_KEY_ID": settings.aws_access_key_id.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key.get_secret_value(),
            "MODELREG_TOPIC_PREFIX": settings.topic_prefix,
            "MODELREG_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "MODELREG_POLICY_FILE": str(settings.policy_file),
            "MODELREG_KEYRING_FILE": str(settings.keyring_file),
            "MODELREG_SIGNING_KEY_FILE": str(settings.signing_key_file),  # the run's keys directory
            "MODELREG_HEALTH_PORT": "0"}  # beside a running stack's services


class Fleet:
    """Each service as its own OS process, as in production."""

    def __init__(self, settings: Settings) -> None:
        self.env = _env(settings)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", name], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


async def test_services_killed_mid_stream_lose_and_repeat_nothing(isolated: Settings) -> None:
    settings = isolated
    kafka = Kafka(settings)
    await kafka.start(TOPICS)
    fleet = Fleet(settings)
    for name in SERVICES:
        fleet.start(name)
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

        try:
            await eventually(lambda: pool.fetchval(
                "SELECT count(*) = 60 FROM promotion_versions WHERE name LIKE $1 AND stage = 'production'",
                prefix + "%"), timeout=150)
        except AssertionError:
            stages = await pool.fetch("SELECT stage, count(*) FROM promotion_versions WHERE name LIKE $1 "
                                      "GROUP BY 1", prefix + "%")
            counts = {t: len(kafka.matching(t, lambda s: s.data.get("name", "").startswith(prefix)))
                      for t in ("model.ingested", "model.validated", "qa.requested", "metrics.evaluated",
                                "model.promoted", "registry.dlq")}
            outbox = await pool.fetch("SELECT service, count(*) FROM outbox GROUP BY 1")
            raise AssertionError(f"stages {[tuple(r) for r in stages]}, topics {counts}, "
                                 f"outbox {[tuple(r) for r in outbox]}") from None
        await eventually(lambda: pool.fetchval(
            "SELECT count(DISTINCT name) = 60 FROM audit_log WHERE name LIKE $1 AND action = 'promoted' "
            "AND to_stage = 'production'", prefix + "%"), timeout=60)
    finally:
        qa.cancel()
        fleet.stop()

    try:
        # State changed exactly once per version and stage...
        history = await pool.fetch("SELECT name, version, to_stage, count(*) FROM stage_history "
                                   "WHERE name LIKE $1 GROUP BY 1, 2, 3", prefix + "%")
        assert len(history) == 120 and all(r["count"] == 1 for r in history)
        assert await pool.fetchval("SELECT count(*) FROM model_versions WHERE name LIKE $1", prefix + "%") == 60
        # ...each decision was published under one event id (a crash may re-send it, never re-decide it)...
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
        # ...and the audit log holds each record once, in an intact chain.
        duplicates = await pool.fetchval(
            "SELECT count(*) FROM (SELECT name, version, action, to_stage FROM audit_log WHERE name LIKE $1 "
            "AND action IN ('ingested', 'validated', 'promoted') GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d",
            prefix + "%")
        assert duplicates == 0
        from services.audit import store as audit_store

        async with pool.acquire() as conn:
            assert (await audit_store.verify(conn)).intact
    finally:
        await pool.close()
        await kafka.stop()
