"""`modelreg demo`: the whole system, and a model's life played against it, step by step.

Starts the local stack and every service (each its own process), then plays a training
pipeline, a QA system, a production monitor and an attacker through the SDK: v1 goes to
production, a better v2 replaces it, a worse v3 stays in staging, degraded production
metrics roll v2 back to v1, and a malicious pickle is refused. Every state change is printed
as it arrives on `registry.audit`, and the audit chain is verified at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from services.cli.service_names import SERVICES
from services.cli.up import service_env
from shared.kafka_acls import role_group_prefix
from shared.kafka_security import reader_options
from shared.sdk import Registry
from shared.settings import Settings, load_settings
from shared.stack.launcher import LocalStack

# What the demo's QA system measures for each version: v2 beats v1 by more than the policy's
# min_improvement, v3 clears the thresholds but not the champion.
QA_RESULTS = {1: {"auc": 0.92, "latency_p99_ms": 12.0},
              2: {"auc": 0.95, "latency_p99_ms": 11.0},
              3: {"auc": 0.93, "latency_p99_ms": 10.0}}


def run(timeout: float = 90.0) -> int:
    stack = LocalStack()
    stack.up()
    stack.stop_services()  # restarted with the example policy (unless MODELREG_POLICY_FILE says otherwise)
    env = {**service_env(), **stack.env()}
    stack.start_services(SERVICES, env)
    os.environ.update(env)
    _say(f"services running: {', '.join(SERVICES)} (logs in {stack.dir / 'logs'})")
    # Each part played by its own Kafka principal: the pipeline registers, QA evaluates, the
    # audit trail is watched as a reader (on a stack without them, all are the same client).
    settings = load_settings()
    roles = {role: load_settings(**stack.kafka_env(role)) for role in ("pipeline", "qa", "reader")}
    code = asyncio.run(Demo(settings, timeout, roles).play())
    _say("the registry keeps running: the UI is at http://127.0.0.1:8080/, `modelreg stack status` shows "
         "the rest, `modelreg stack down` stops it all")
    return code


class Demo:
    def __init__(self, settings: Settings, timeout: float, roles: dict[str, Settings] | None = None) -> None:
        self.settings = settings
        self.roles = roles or {}
        self.timeout = timeout
        self.name = f"demo-fraud-{uuid.uuid4().hex[:6]}"
        self.audit: list[dict[str, Any]] = []
        self.versions: dict[uuid.UUID, int] = {}

    async def play(self) -> int:
        reader = self.roles.get("reader", self.settings)
        consumer = AIOKafkaConsumer(
            self.settings.topic("registry.audit"), self.settings.topic("qa.requested"),
            **reader_options(reader), auto_offset_reset="latest",
            enable_auto_commit=False, group_id=f"{role_group_prefix(self.settings.topic_prefix, 'reader')}"
                                               f"demo-{uuid.uuid4().hex[:8]}")
        await consumer.start()
        async with Registry(self.roles.get("pipeline", self.settings), source="pipelines/demo-train") as registry, \
                Registry(self.roles.get("qa", self.settings), source="qa/demo-runner") as qa:
            listener = asyncio.create_task(self._listen(consumer, qa))
            try:
                await self._wait_assigned(consumer)
                await self._script(registry, qa)
                await self._summary()
                return 0
            except TimeoutError as exc:
                _say(f"the registry did not get there within {self.timeout:.0f}s: {exc}")
                _say("the services' logs are in .modelreg/logs/")
                return 1
            finally:
                listener.cancel()
                await consumer.stop()

    async def _script(self, registry: Registry, qa: Registry) -> None:
        name = self.name
        _say(f"1. a training pipeline registers {name} v1; QA measures auc 0.92")
        await self._register(registry, 1)
        await self._until(lambda a: a["action"] == "promoted" and a.get("version") == 1
                          and a.get("to_stage") == "production", "v1 in production")

        _say("2. v2 is better (QA: auc 0.95): it becomes the champion, v1 steps down")
        await self._register(registry, 2)
        await self._until(lambda a: a["action"] == "promoted" and a.get("version") == 2
                          and a.get("to_stage") == "production", "v2 in production")

        _say("3. v3 clears the thresholds (auc 0.93) but does not beat the champion: it stays in staging")
        await self._register(registry, 3)
        await self._until(lambda a: a["action"] == "held" and a.get("version") == 3
                          and "champion" in (a.get("reason") or ""), "v3 held in staging")

        _say("4. the production monitor sees v2's auc fall to 0.80: the registry rolls back to v1")
        await qa.evaluate(name, 2, suite="live-monitor", metrics={"auc": 0.80},
                          environment="production", evaluator="monitors/demo")
        await self._until(lambda a: a["action"] == "promoted" and a.get("version") == 1
                          and a.get("reason") == "rollback", "v1 restored")

        _say("5. someone registers a pickle that runs os.system when loaded: it is refused")
        await self._register(registry, 4, malicious=True)
        await self._until(lambda a: a["action"] == "rejected" and a.get("version") == 4, "v4 rejected")

    async def _register(self, registry: Registry, seed: int, *, malicious: bool = False) -> None:
        class Exploit:
            def __reduce__(self) -> tuple[Any, ...]:
                return (os.system, ("echo owned",))

        payload: Any = Exploit() if malicious else {"kind": "logistic-regression",
                                                    "weights": [0.1 * seed, -0.2, 0.3], "bias": 0.05}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"model-v{seed}.pkl"
            path.write_bytes(pickle.dumps(payload))
            await registry.register(self.name, path, metrics={"train_auc": 0.9 + seed / 100},
                                    run_id=f"demo-run-{seed}", description=f"demo model, run {seed}",
                                    dataset={"uri": "s3://datasets/fraud", "version": "2026-11"})

    async def _listen(self, consumer: AIOKafkaConsumer, qa: Registry) -> None:
        """Print the audit trail as it arrives, and answer qa.requested like a QA system."""
        answered: set[int] = set()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    data = event["data"]
                    if data.get("name") != self.name:
                        continue
                    if record.topic.endswith("qa.requested"):
                        version = data["version"]
                        if version in QA_RESULTS and version not in answered:
                            answered.add(version)
                            await qa.evaluate(self.name, version, suite="offline-eval",
                                              metrics=QA_RESULTS[version], passed=True,
                                              evaluator="qa/demo-runner",
                                              correlationid=uuid.UUID(event["correlationid"]))
                        continue
                    self.audit.append(data)
                    _step(data)

    async def _until(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(predicate(a) for a in self.audit):
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.1)

    async def _wait_assigned(self, consumer: AIOKafkaConsumer) -> None:
        for _ in range(200):
            if consumer.assignment():
                await consumer.seek_to_end()
                return
            await asyncio.sleep(0.05)

    async def _summary(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.settings.dsn)
        try:
            seen = len(self.audit)
            for _ in range(100):  # until the audit writer has stored what the demo saw
                if await conn.fetchval("SELECT count(*) FROM audit_log WHERE name = $1", self.name) >= seen:
                    break
                await asyncio.sleep(0.1)
            rows = await conn.fetch(
                "SELECT version, stage, blocked FROM promotion_versions WHERE name = $1 ORDER BY version",
                self.name)
            rejected = await conn.fetch(
                "SELECT version FROM model_versions WHERE name = $1 AND status = 'rejected'", self.name)
            from services.audit import store as audit_store

            verification = await audit_store.verify(conn)
        finally:
            await conn.close()
        _say(f"where {self.name}'s versions are now:")
        for row in rows:
            note = f" ({row['blocked']})" if row["blocked"] else ""
            print(f"    v{row['version']}: {row['stage']}{note}")
        for row in rejected:
            print(f"    v{row['version']}: rejected at ingest/validation")
        status = "intact" if not verification.problems else f"BROKEN: {verification.problems[0]}"
        _say(f"audit chain {status}: {verification.count} records, {seen} of them about {self.name} "
             f"(`modelreg audit tail --model {self.name}` shows them)")


def _say(text: str) -> None:
    print(f"\033[1m==>\033[0m {text}" if sys.stdout.isatty() else f"==> {text}", flush=True)


def _step(data: dict[str, Any]) -> None:
    stages = ""
    if data.get("from_stage") or data.get("to_stage"):
        stages = f" {data.get('from_stage') or '-'} -> {data.get('to_stage') or '-'}"
    reason = f": {data['reason']}" if data.get("reason") else ""
    if len(reason) > 110:
        reason = reason[:107] + "..."
    print(f"    {data['action']:<17} v{data.get('version')}{stages:<26} by {data['actor']}{reason}", flush=True)
