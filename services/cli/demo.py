"""`modelreg demo`: the whole system, and a model's life played against it, step by step.

Starts the local stack and every service (each its own process), then acts as a training
pipeline: uploads an artifact to S3 and publishes `model.registered` as raw CloudEvents JSON.
Every state change is printed as it arrives on `registry.audit`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import pickle
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.cli.main import SERVICES
from services.cli.up import ServiceProcesses
from shared.settings import Settings, load_settings
from shared.stack.launcher import LocalStack
from shared.storage import ObjectStore



def run(timeout: float = 120.0) -> int:
    stack = LocalStack()
    stack.up()
    env = {**os.environ, **stack.env()}
    os.environ.update(stack.env())
    settings = load_settings()
    processes = ServiceProcesses(SERVICES, env, echo=bool(os.environ.get("MODELREG_DEMO_LOGS")))
    processes.start()
    try:
        return asyncio.run(play(settings, timeout))
    finally:
        processes.stop()


def _artifact(seed: int) -> bytes:
    """A harmless pickled 'model': plain data, no callables."""
    return pickle.dumps({"kind": "logistic-regression", "weights": [0.1 * seed, -0.2, 0.3], "bias": 0.05})


async def play(settings: Settings, timeout: float) -> int:
    name = f"demo-fraud-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    audit = AIOKafkaConsumer(settings.topic("registry.audit"),
                             bootstrap_servers=settings.kafka_bootstrap_servers,
                             auto_offset_reset="latest", enable_auto_commit=False,
                             group_id=f"modelreg-demo-{uuid.uuid4().hex[:6]}")
    await producer.start()
    await audit.start()
    try:
        await _wait_assigned(audit)
        _say(f"model {name}: a training pipeline uploads its artifact and registers it")
        body = _artifact(1)
        key = f"inbox/{name}/model.pkl"
        async with ObjectStore(settings) as store:
            await store.ensure_bucket()
            await store.client.upload_fileobj(io.BytesIO(body), settings.s3_bucket, key)
        event = {
            "specversion": "1.0", "id": str(uuid.uuid4()), "type": "model.registered",
            "source": "pipelines/demo-train", "time": datetime.now(UTC).isoformat(),
            "subject": name, "datacontenttype": "application/json",
            "data": {"name": name,
                     "artifact": {"uri": f"s3://{settings.s3_bucket}/{key}",
                                  "sha256": hashlib.sha256(body).hexdigest(),
                                  "size_bytes": len(body), "format": "pickle"},
                     "metrics": {"auc": 0.91}, "run_id": "demo-run-1",
                     "registered_by": "pipelines/demo-train"},
        }
        await producer.send_and_wait(settings.topic("model.registered"), json.dumps(event).encode(),
                                     key=name.encode(),
                                     headers=[("content-type", b"application/cloudevents+json")])
        _say(f"published model.registered for {name}; waiting for the registry")
        expected = {"ingested"}
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while not expected <= seen and time.monotonic() < deadline:
            batches = await audit.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    data = json.loads(record.value)["data"]
                    if data.get("name") != name:
                        continue
                    seen.add(data["action"])
                    _step(data)
        if not expected <= seen:
            _say(f"the registry did not finish within {timeout:.0f}s; missing: {sorted(expected - seen)}")
            return 1
        _say("done: the version is recorded in PostgreSQL and announced on Kafka")
        return 0
    finally:
        await audit.stop()
        await producer.stop()


async def _wait_assigned(consumer: AIOKafkaConsumer) -> None:
    for _ in range(100):
        if consumer.assignment():
            await consumer.seek_to_end()
            return
        await consumer.getmany(timeout_ms=100)


def _say(text: str) -> None:
    print(f"\033[1m==>\033[0m {text}" if sys.stdout.isatty() else f"==> {text}", flush=True)


def _step(data: dict[str, Any]) -> None:
    stages = ""
    if data.get("from_stage") or data.get("to_stage"):
        stages = f" {data.get('from_stage') or '-'} -> {data.get('to_stage') or '-'}"
    reason = f" ({data['reason']})" if data.get("reason") else ""
    print(f"    audit: {data['action']:<14} {data['name']} v{data.get('version')}{stages}"
          f" by {data['actor']}{reason}", flush=True)
