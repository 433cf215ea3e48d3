"""A model's life as `registry.audit` records, published to the topic and written at once
through the audit writer's own batch handler (`services.audit.app.on_audit_batch`): the same
rows the audit service writes from the topic, without waiting for the other services. The UI
and the schema tests read only these tables, so this is all they need, and it is deterministic.

Publishing keeps the topic the source of truth (`modelreg replay` rebuilds the same view from
it); an audit service that consumes them later finds them stored and skips them."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from services.audit.app import on_audit_batch
from shared.broker import ensure_topics
from shared.events import CONTENT_TYPE, RegistryAudit, RegistryAuditData, new_event
from shared.kafka_security import kafka_client_options
from shared.settings import Settings
from tests.support import signed

CHECKS = [{"name": "artifact_present", "passed": True, "detail": "s3 object found"},
          {"name": "checksum", "passed": True, "detail": "sha256 matches"},
          {"name": "pickle_safety", "passed": True, "detail": "only allowed globals"}]


class Life:
    """Builds one model's audit records in order, a few minutes apart."""

    def __init__(self, name: str, start: datetime | None = None) -> None:
        self.name = name
        self.clock = start or datetime.now(UTC) - timedelta(hours=3)
        self.events: list[Any] = []
        self.correlation: dict[int, uuid.UUID] = {}

    def record(self, action: str, version: int, *, actor: str = "promotion", from_stage: str | None = None,
               to_stage: str | None = None, reason: str | None = None, evidence: dict[str, Any] | None = None,
               source: str = "modelreg/promotion") -> None:
        self.clock += timedelta(minutes=7)
        correlation = self.correlation.setdefault(version, uuid.uuid4())
        data = RegistryAuditData(action=action, name=self.name, version=version, from_stage=from_stage,
                                 to_stage=to_stage, actor=actor, reason=reason, evidence=evidence or {})
        self.events.append(new_event(RegistryAudit, data, source=source, correlationid=correlation,
                                     time=self.clock))

    def register(self, version: int, *, auc: float, registered_by: str = "pipelines/train") -> None:
        body = f"{self.name}-{version}".encode()
        self.record("ingested", version, actor=registered_by, to_stage="none", reason="registered",
                    source="modelreg/ingest", evidence={
                        "sha256": hashlib.sha256(body).hexdigest(), "size_bytes": 48_000 + version * 1024,
                        "artifact_uri": f"s3://modelreg/artifacts/{self.name}/{version}/{hashlib.sha256(body).hexdigest()}",
                        "source_uri": f"s3://modelreg/inbox/{self.name}/{version}.pkl", "format": "pickle",
                        "run_id": f"run-{version:04d}", "metrics": {"auc": auc - 0.01},
                        "tags": {"team": "risk", "framework": "sklearn"}, "params": {"max_depth": 4 + version},
                        "description": f"gradient boosting, iteration {version}",
                        "dataset": {"uri": "s3://datasets/transactions", "version": f"2026-0{version}"}})
        self.record("validated", version, actor="validation", reason="every check passed",
                    source="modelreg/validation", evidence={"checks": CHECKS, "qa_suites": ["offline-eval"]})
        self.record("promoted", version, from_stage="none", to_stage="staging", reason="policy",
                    evidence={"checks": CHECKS})

    def evaluate(self, version: int, auc: float, *, environment: str = "offline", suite: str = "offline-eval",
                 stage: str = "staging") -> None:
        self.record("evaluated", version, actor="qa/nightly", from_stage=stage, to_stage=stage,
                    reason=f"{suite} ({environment})",
                    evidence={"suite": suite, "environment": environment, "metrics": {"auc": auc},
                              "passed": True, "evaluator": "qa/nightly", "dataset": None})

    def move(self, version: int, from_stage: str, to_stage: str, reason: str, **evidence: Any) -> None:
        action = "promoted" if to_stage == "production" or (from_stage, to_stage) == ("none", "staging") else "demoted"
        self.record(action, version, from_stage=from_stage, to_stage=to_stage, reason=reason, evidence=evidence)


def three_versions_and_a_rollback(name: str) -> Life:
    """v1 and v2 reach production in turn; v3 is held (it does not beat the champion); v2's
    production metrics break the rollback threshold and v1 is restored."""
    life = Life(name)
    life.register(1, auc=0.92)
    life.evaluate(1, 0.92)
    life.move(1, "staging", "production", "policy")
    life.register(2, auc=0.95)
    life.evaluate(2, 0.95)
    life.move(1, "production", "none", "superseded", superseded_by=2)
    life.move(2, "staging", "production", "policy")
    life.register(3, auc=0.925)
    life.evaluate(3, 0.925)
    life.record("held", 3, from_stage="staging", to_stage="staging",
                reason="auc 0.925 does not beat champion v2's 0.95 by the required +0.01 (higher is better)")
    life.evaluate(2, 0.80, environment="production", suite="live-monitor", stage="production")
    life.move(2, "production", "none", "rollback",
              broken=[{"gate": "threshold:auc", "passed": False, "detail": "auc = 0.8 (live-monitor) breaks >= 0.85"}])
    life.move(1, "none", "production", "rollback", rolled_back=2)
    return life


async def write(settings: Settings, db: asyncpg.Pool, life: Life) -> None:
    """Publish the records to `registry.audit`, then append them as the audit writer does: one
    transaction, chain and view together."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all")
    await producer.start()
    try:
        for event in life.events:
            await producer.send(settings.topic(RegistryAudit.topic), signed(settings, event), key=life.name.encode(),
                                headers=[("content-type", CONTENT_TYPE.encode())])
        await producer.flush()
    finally:
        await producer.stop()
    async with db.acquire() as conn, conn.transaction():
        await on_audit_batch(conn, life.events)
