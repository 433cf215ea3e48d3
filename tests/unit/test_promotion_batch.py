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
    assert moved.stage == "production" and batch.champion("m") == moved
    batch.clear_approvals("m", 1, "production")
    assert batch.approvals("m", 1, "production") == set() and batch._new_approvals == []
    assert batch.traceparent("m", 1).startswith("00-111")
