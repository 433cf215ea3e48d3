"""Outages survived with nothing lost: a Kafka broker SIGKILLed, the whole Kafka cluster
stopped, PostgreSQL restarted, the S3 server down, each in the middle of a flow of
registrations and QA results through the services running as their own OS processes.

These tests take infrastructure away, so they never touch the shared default stack: they run
a stack of their own (`modelreg stack up --brokers 3` in MODELREG_FAULT_STACK_DIR, default
.modelreg-faults/ in the repository, on ports 19092-19097, 15432 and 19000 unless
MODELREG_FAULT_KAFKA_PORT / _POSTGRES_PORT / _S3_PORT say otherwise), started here when it is
not running and left up for the next run (CI stops it). The flows are kept small (60
versions over 15 models) and the waits long: the cluster shares two cores with everything
else. Readiness is watched: PostgreSQL, S3 or every Kafka broker away makes every service
answer 503 naming it; one broker of three does not. Each test ends with every version
accounted for (bench/accounting.py: ingested once, validated, promoted to production in
turn, one audit record per step, lag drained to zero, every service ready again, `modelreg
audit verify` and `modelreg replay` clean), and the service processes it started are the
ones still running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.accounting import Expected, account_for
from bench.fleet import SERVICES, Fleet, wait_all_ready, wait_all_unready
from shared.broker import ensure_topics, make_admin
from shared.db import migrate
from shared.events import TOPICS
from shared.kafka_acls import apply_acls, remove_acls
from shared.keys import write_keyring
from shared.settings import Settings, load_settings
from shared.stack import postgres
from shared.stack.kafka_auth import ADMIN
from shared.stack.launcher import LocalStack, Ports
from shared.stack.proc import alive, terminate
from tests.integration.test_resilience import answer_qa, registrations
from tests.support import Kafka

# Not in `make test` (a three-broker stack of its own and four outages: about 20 minutes);
# `make test-slow` runs it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:8]


def _fault_ports() -> Ports:
    return Ports(kafka=int(os.environ.get("MODELREG_FAULT_KAFKA_PORT", "19092")),
                 postgres=int(os.environ.get("MODELREG_FAULT_POSTGRES_PORT", "15432")),
                 s3=int(os.environ.get("MODELREG_FAULT_S3_PORT", "19000")))


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[LocalStack]:
    stack = LocalStack(Path(os.environ.get("MODELREG_FAULT_STACK_DIR") or ROOT / ".modelreg-faults"))
    if not stack.serving() or stack.state.kafka_brokers != 3:
        stack.up(_fault_ports(), brokers=3, log=lambda line: print(f"[fault stack] {line}"))
    yield stack
    if os.environ.get("CI"):
        stack.down(purge=True, log=lambda line: print(f"[fault stack] {line}"))


@pytest.fixture(scope="module")
async def fault_settings(fault_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """This run's database, topics (and their ACLs), bucket and keys on the fault stack."""
    database = f"modelreg_faults_{RUN}"
    admin = await asyncpg.connect(postgres.dsn(fault_stack.ports.postgres, "postgres"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    keys_dir = tmp_path_factory.mktemp("fault-keys")
    # The stack's settings but this run's keyring (its alias would win over the field name).
    stack_env = {k.lower(): v for k, v in fault_stack.env().items() if k != "MODELREG_KEYRING_FILE"}
    settings = load_settings(**{**stack_env,
                                "database_url": postgres.dsn(fault_stack.ports.postgres, database),
                                "signing_key_file": keys_dir, "keyring_file": write_keyring(keys_dir),
                                "s3_bucket": f"modelreg-faults-{RUN}", "topic_prefix": f"f{RUN}.",
                                "topic_partitions": 3, "policy_file": str(ROOT / "tests" / "policy.yaml"),
                                "health_port": 0, "archival_sweep_seconds": 0.5, "early_event_grace_seconds": 5})
    await migrate(settings.dsn)
    await ensure_topics(settings)
    await apply_acls(settings, settings.topic_prefix)
    yield settings
    for part in ("kafka", "postgres", "s3"):  # a failed test may have left one down
        {"kafka": fault_stack.start_kafka, "postgres": fault_stack.start_postgres,
         "s3": fault_stack.start_s3}[part](log=lambda line: None)
    await remove_acls(settings, settings.topic_prefix)
    admin_client = make_admin(settings, "modelreg-tests")
    await admin_client.start()
    try:
        await admin_client.delete_topics([t for t in await admin_client.list_topics()
                                          if t.startswith(settings.topic_prefix)])
    finally:
        await admin_client.close()
    admin = await asyncpg.connect(postgres.dsn(fault_stack.ports.postgres, "postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()


def _service_env(stack: LocalStack, settings: Settings, principal: str) -> dict[str, str]:
    """The run's database, topics, policy and keys; Kafka as `principal` (a service, or the admin
    `modelreg` commands run as)."""
    s = settings
    return {**stack.env(principal),
            "DATABASE_URL": s.dsn, "S3_BUCKET": s.s3_bucket, "MODELREG_TOPIC_PREFIX": s.topic_prefix,
            "MODELREG_TOPIC_PARTITIONS": str(s.topic_partitions), "MODELREG_POLICY_FILE": str(s.policy_file),
            "MODELREG_KEYRING_FILE": str(s.keyring_file), "MODELREG_SIGNING_KEY_FILE": str(s.signing_key_file),
            "MODELREG_ARCHIVAL_SWEEP_SECONDS": "0.5", "MODELREG_EARLY_EVENT_GRACE_SECONDS": "5"}


@pytest.fixture
async def flow(fault_stack: LocalStack, fault_settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """Each service as its own OS process, each its own Kafka principal, as in production; ready
    (200 on /readyz) before the test starts its flow."""
    fleet = Fleet(lambda name: _service_env(fault_stack, fault_settings, name),
                  logs=Path(fault_stack.dir) / "logs" / f"faults-{RUN}")
    fleet.start_all()
    tap = Kafka(fault_settings)
    await tap.start(TOPICS)
    pool = await asyncpg.create_pool(fault_settings.dsn, min_size=1, max_size=2)
    try:
        await wait_all_ready(fleet)
        yield {"fleet": fleet, "kafka": tap, "pool": pool, "settings": fault_settings,
               "cli_env": {**os.environ, **_service_env(fault_stack, fault_settings, ADMIN)}}
    finally:
        fleet.stop()
        await tap.stop()
        await pool.close()


def _about(prefix: str) -> Any:
    """A dead letter of a record about one of the test's models (keyed by model name)."""
    return lambda seen: (seen.data.get("key") or "").startswith(prefix)


class Scenario:
    """One fault scenario's flow: `models` x `per_model` registrations of models named
    KIND-xxxxxx-N (artifact uploaded first), a QA system answering them, and the end state
    every scenario must reach."""

    def __init__(self, flow: dict[str, Any], kind: str, models: int, per_model: int) -> None:
        self.flow = flow
        self.kafka: Kafka = flow["kafka"]
        self.prefix = f"{kind}-{uuid.uuid4().hex[:6]}-"
        self.models, self.per_model = models, per_model
        self.events: list[dict[str, Any]] = []
        self._sent = 0
        self._qa: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Scenario:
        self._qa = asyncio.create_task(answer_qa(self.kafka, self.prefix))
        names = [f"{self.prefix}{i % self.models}" for i in range(self.models * self.per_model)]
        self.events = await registrations(self.flow["settings"], names)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._qa is not None:
            self._qa.cancel()

    async def publish(self, share: float = 1.0, pace: float = 0.02) -> None:
        """The next `share` of the registrations (all that is left by default), at a steady
        pace rather than in one burst, so the fault lands in the middle of the flow."""
        upto = len(self.events) if share >= 1 else self._sent + int(len(self.events) * share)
        for event in self.events[self._sent:upto]:
            await self.kafka.publish("model.registered", event)
            await asyncio.sleep(pace)
        self._sent = upto

    async def ingested(self, count: int) -> None:
        await self.kafka.wait_for("model.ingested", lambda s: s.data["name"].startswith(self.prefix),
                                  count=count, timeout=300)

    def mine(self, seen: Any) -> bool:
        return bool(seen.data.get("name", "").startswith(self.prefix))

    async def all_accounted_for(self) -> None:
        """The end state every fault scenario must reach (bench/accounting.py): every version
        promoted to production in turn exactly once, nothing dead-lettered, lag drained, every
        service ready again, the audit chain intact and `modelreg replay` clean; and the
        service processes are the ones the test started (none died)."""
        kafka, prefix = self.kafka, self.prefix

        async def where_they_are() -> str:
            stages = await self.flow["pool"].fetch("SELECT stage, count(*) FROM promotion_versions "
                                                   "WHERE name LIKE $1 GROUP BY 1", prefix + "%")
            counts = {t: len(kafka.matching(t, self.mine))
                      for t in ("model.ingested", "model.validated", "model.rejected", "qa.requested",
                                "metrics.evaluated", "model.promoted")}
            counts["registry.dlq"] = len(kafka.matching("registry.dlq", _about(prefix)))
            return f"stages {[tuple(r) for r in stages]}, topics {counts}"

        expected = Expected(prefix, {f"{prefix}{i}": self.per_model for i in range(self.models)})
        fleet: Fleet = self.flow["fleet"]
        end = await account_for(fleet, self.flow["settings"], self.flow["pool"], expected, self.flow["cli_env"],
                                progress=where_they_are)
        end.require()
        assert kafka.matching("registry.dlq", _about(prefix)) == []
        assert fleet.kills == dict.fromkeys(SERVICES, 0) and not fleet.exited()


async def test_a_broker_killed_mid_flow_and_restarted_loses_and_repeats_nothing(
        flow: dict[str, Any], fault_stack: LocalStack) -> None:
    async with Scenario(flow, "brokerkill", models=15, per_model=4) as run:
        await run.publish(0.5)
        await run.ingested(10)
        # SIGKILL a broker that leads some of the run's partitions (every one of three does).
        victim = fault_stack.kafka_nodes[1]
        pid = fault_stack.kafka_node_pid(victim.node_id)
        assert alive(pid)
        os.kill(pid, signal.SIGKILL)
        await run.publish()  # acks=all with min.insync.replicas 2: two brokers take it
        # Two brokers of three are a working cluster: no service may call itself unready for it
        # (Kubernetes would take every replica out at once over one broker).
        during = await flow["fleet"].readiness_all()
        assert {name: state.status for name, state in during.items()} == dict.fromkeys(SERVICES, 200), during
        await asyncio.sleep(10)
        await asyncio.to_thread(fault_stack.start_kafka, log=lambda line: None)
        assert alive(fault_stack.kafka_node_pid(victim.node_id))
        await run.all_accounted_for()


async def test_the_whole_kafka_cluster_stopped_for_30s_is_waited_out(
        flow: dict[str, Any], fault_stack: LocalStack) -> None:
    """The default stack's single broker stopped for 30 s, played here with every broker of
    the cluster: no bootstrap server answers, every service answers 503 naming Kafka, rides it
    out and is ready again once the cluster is back."""
    async with Scenario(flow, "kafkadown", models=10, per_model=3) as run:
        await run.publish(0.5)
        await run.ingested(5)
        pids = [fault_stack.kafka_node_pid(node.node_id) for node in fault_stack.kafka_nodes]
        await asyncio.gather(*(asyncio.to_thread(terminate, pid, timeout=60) for pid in pids))
        assert not fault_stack.answers()["kafka"]
        await wait_all_unready(flow["fleet"], "kafka")
        await asyncio.sleep(30)
        await asyncio.to_thread(fault_stack.start_kafka, log=lambda line: None)
        await run.publish()  # the rest once it is back (a producer cannot wait 30 s)
        await run.all_accounted_for()


async def test_postgres_restarted_mid_flow_services_recover_without_a_restart(
        flow: dict[str, Any], fault_stack: LocalStack) -> None:
    try:
        async with Scenario(flow, "pgrestart", models=15, per_model=4) as run:
            await run.publish(0.5)
            await run.ingested(10)
            await asyncio.to_thread(fault_stack.stop_postgres)  # fast shutdown: every session is cut
            assert not fault_stack.answers()["postgres"]
            await run.publish()
            await wait_all_unready(flow["fleet"], "postgres")
            await asyncio.to_thread(fault_stack.start_postgres, log=lambda line: None)
            await run.all_accounted_for()
    finally:
        if not fault_stack.answers()["postgres"]:
            await asyncio.to_thread(fault_stack.start_postgres, log=lambda line: None)


async def test_s3_down_for_a_while_ingest_waits_instead_of_dead_lettering(
        flow: dict[str, Any], fault_stack: LocalStack) -> None:
    try:
        async with Scenario(flow, "s3down", models=10, per_model=3) as run:  # the artifact is uploaded first
            await asyncio.to_thread(fault_stack.stop_s3)
            assert not fault_stack.answers()["s3"]
            await run.publish()
            await wait_all_unready(flow["fleet"], "s3")
            await asyncio.sleep(15)  # ingest sees S3 down for every one of them meanwhile
            assert run.kafka.matching("registry.dlq", _about(run.prefix)) == []
            assert run.kafka.matching("model.rejected", run.mine) == []
            await asyncio.to_thread(fault_stack.start_s3, log=lambda line: None)
            await run.all_accounted_for()
    finally:
        if not fault_stack.answers()["s3"]:
            await asyncio.to_thread(fault_stack.start_s3, log=lambda line: None)
