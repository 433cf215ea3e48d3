"""The promotion batch's in-memory bookkeeping (no database: a batch that was never loaded)."""

from __future__ import annotations

import uuid

from services.promotion.unit_of_work import PromotionBatch


def test_an_event_held_earlier_in_the_same_batch_comes_back_when_its_version_arrives() -> None:
    batch = PromotionBatch(conn=None)  # type: ignore[arg-type]
    held = uuid.uuid4()
    batch.hold(event_id=held, topic="model.validated", name="m", version=1, partition=0, offset=7, payload=b"{}")
    batch.hold(event_id=uuid.uuid4(), topic="metrics.evaluated", name="m", version=2, partition=0, offset=8,
               payload=b"{}")
    waited = batch.add_version(name="m", version=1, sha256="0" * 64, artifact_uri="s3://b/k", registered_by=None,
                               correlation_id=uuid.uuid4(), traceparent=None)
    assert [(w["event_id"], w["topic"], w["offset"]) for w in waited] == [(held, "model.validated", 7)]
    assert batch.get("m", 1) is not None and batch.get("m", 1).stage == "none"
    # the other version's event still waits, and goes to the table at the end of the batch
    assert [h[3] for h in batch._holds] == [2]


def test_approvals_and_stage_changes_are_tracked_for_the_flush() -> None:
    batch = PromotionBatch(conn=None)  # type: ignore[arg-type]
    batch.add_version(name="m", version=1, sha256="0" * 64, artifact_uri="s3://b/k", registered_by="alice",
                      correlation_id=uuid.uuid4(), traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    batch.add_approval(name="m", version=1, to_stage="production", actor="bob", reason="r", event_id=uuid.uuid4())
    batch.add_approval(name="m", version=1, to_stage="production", actor="bob", reason="again",
                       event_id=uuid.uuid4())
    assert batch.approvals("m", 1, "production") == {"bob"}
    row = batch.get("m", 1)
    from datetime import UTC, datetime

    moved = batch.set_stage(row, "production", reason="manual", actor="bob", event_id=uuid.uuid4(),
                            evidence={}, at=datetime.now(UTC), previous_champion=None)
    assert moved.stage == "production" and batch.get("m", 1) == moved
    batch.clear_approvals("m", 1, "production")
    assert batch.approvals("m", 1, "production") == set() and batch._new_approvals == []
    assert batch.traceparent("m", 1).startswith("00-111")


async def test_a_check_a_handler_asks_for_covers_every_version_the_batch_introduces() -> None:
    """A crown `prepare` did not foresee rolls the batch back once for its check: the checks then
    run for that version and for every version the batch's registrations introduce (which its
    later events may crown), so that the batch is not redone once per new version."""
    from types import SimpleNamespace
    from typing import Any

    from services.promotion.app import Promotion
    from shared.events import ArtifactRef, ModelIngested, ModelIngestedData, new_event

    def ingested(version: int) -> Any:
        return new_event(ModelIngested, ModelIngestedData(
            name="m", version=version, artifact=ArtifactRef(uri=f"s3://b/m/{version}", sha256=str(version) * 64,
                                                            size_bytes=1)), source="modelreg/ingest")

    batch = PromotionBatch(conn=None)  # type: ignore[arg-type]
    batch._events = [ingested(1), ingested(2), ingested(3)]
    batch.add_version(name="m", version=1, sha256="1" * 64, artifact_uri="s3://b/m/1", registered_by=None,
                      correlation_id=uuid.uuid4(), traceparent=None)
    promotion = Promotion(SimpleNamespace(policy=None))  # type: ignore[arg-type]
    asked: dict[Any, Any] = {}

    async def verify(_batch: Any, checks: dict[Any, Any]) -> None:
        asked.update(checks)

    promotion._verify = verify  # type: ignore[method-assign]
    tx = SimpleNamespace(batch=SimpleNamespace(scope=batch))
    fetch = await promotion._verify_outside(tx, batch.get("m", 1))  # type: ignore[arg-type]
    await fetch(None)  # type: ignore[arg-type]
    assert sorted((key[2], key[3], check.sha256) for key, check in asked.items()) == \
        [(v, f"s3://b/m/{v}", str(v) * 64) for v in (1, 2, 3)]
