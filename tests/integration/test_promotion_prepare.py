"""Promotion's `prepare` on the real database and S3: which versions a batch may crown it
checks before the batch's transaction opens (a crown it misses costs the batch a rolled-back
attempt, `NeedsIO`)."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

from services.promotion.app import Promotion
from shared.consumer import Batch
from shared.events import (
    ArtifactRef,
    CloudEvent,
    MetricsEvaluated,
    MetricsEvaluatedData,
    ModelIngested,
    ModelIngestedData,
    ModelValidated,
    ModelValidatedData,
)
from shared.events import new_event as event
from shared.policy import load_policy
from shared.runtime import Resources
from shared.settings import Settings
from shared.storage import ObjectStore
from tests.support import put_artifact, unique_name


async def prepared(settings: Settings, db: asyncpg.Pool, events: list[CloudEvent[Any]]) -> dict[Any, Any]:
    async with ObjectStore(settings) as store:
        promotion = Promotion(Resources(settings, db, store, load_policy(None)))
        batch = Batch()
        await promotion.prepare(batch, events, {})
    return batch.facts


def ingested(name: str, artifact: dict[str, Any]) -> CloudEvent[Any]:
    return event(ModelIngested, ModelIngestedData(
        name=name, version=1, artifact=ArtifactRef(uri=artifact["uri"], sha256=artifact["sha256"],
                                                   size_bytes=artifact["size_bytes"])), source="modelreg/ingest")


def evaluated(name: str) -> CloudEvent[Any]:
    return event(MetricsEvaluated, MetricsEvaluatedData(
        name=name, version=1, suite="offline-eval", environment="offline", metrics={"auc": 0.99}),
        source="qa/tests")


async def test_a_version_registered_and_measured_in_one_batch_is_checked_ahead(
        settings: Settings, db: asyncpg.Pool) -> None:
    """Its registration, validation and QA result in one batch: the version is in no table
    yet, and its registration says which bytes to check."""
    name = unique_name("prep")
    artifact = await put_artifact(settings, f"inbox/{name}/1.bin", b"model bytes")
    validated = event(ModelValidated, ModelValidatedData(name=name, version=1, checks=[]),
                      source="modelreg/validation")
    facts = await prepared(settings, db, [ingested(name, artifact), validated, evaluated(name)])
    [(key, verdict)] = facts.items()
    assert key == ("integrity", name, 1, artifact["uri"], hashlib.sha256(b"model bytes").hexdigest())
    assert verdict.intact


async def test_a_registration_alone_is_checked_only_when_a_crown_waits_for_it(
        settings: Settings, db: asyncpg.Pool) -> None:
    """A QA result that came before its version waits in `promotion_deferred`: the version's
    registration may crown it, so it is checked; without one nothing is."""
    waiting, plain = unique_name("prep"), unique_name("prep")
    artifacts = {n: await put_artifact(settings, f"inbox/{n}/1.bin", n.encode()) for n in (waiting, plain)}
    early = evaluated(waiting)
    await db.execute(
        """INSERT INTO promotion_deferred (event_id, topic, name, version, partition, "offset", payload)
           VALUES ($1, 'metrics.evaluated', $2, 1, 0, 0, $3)""", early.id, waiting, early.to_json())
    facts = await prepared(settings, db, [ingested(waiting, artifacts[waiting]), ingested(plain, artifacts[plain])])
    assert [key[1] for key in facts] == [waiting]
