"""Typed audit evidence: written only as its action's type, read back by the view as that
type (leniently, for records of any age), and published per action in the JSON Schema."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from services.audit.chain import AuditRecord
from services.audit.view import project
from shared.consumer import Tx
from shared.events import (
    TYPED_EVIDENCE,
    ArchivedEvidence,
    IngestedEvidence,
    QuarantinedEvidence,
    RejectedEvidence,
    read_evidence,
)

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "registry.audit.schema.json").read_text())


def tx() -> Tx:
    return Tx(None, "probe", None)  # type: ignore[arg-type]  # audit() writes no SQL


def test_a_typed_action_refuses_a_dict_and_another_actions_type() -> None:
    with pytest.raises(TypeError, match="IngestedEvidence"):
        tx().audit("ingested", name="m", version=1, evidence={"sha256": "x"})
    with pytest.raises(TypeError, match="IngestedEvidence"):
        tx().audit("ingested", name="m", version=1)
    with pytest.raises(TypeError, match="not ArchivedEvidence"):
        tx().audit("ingested", name="m", version=1, evidence=ArchivedEvidence(archive_uri="s3://b/k"))
    with pytest.raises(TypeError, match="evidence for 'archived', not 'held'"):
        tx().audit("held", name="m", version=1, evidence=ArchivedEvidence(archive_uri="s3://b/k"))


def test_typed_evidence_is_written_as_the_fields_set_and_free_form_actions_stay_dicts() -> None:
    writer = tx()
    writer.sender = "pipelines"
    typed = writer.audit("quarantined", name="m", version=1,
                         evidence=QuarantinedEvidence(expected_sha256="a" * 64, found_sha256=None))
    assert typed.data.evidence == {"expected_sha256": "a" * 64, "found_sha256": None, "sent_by": "pipelines"}
    free = writer.audit("held", name="m", version=1, evidence={"gates": []})
    assert free.data.evidence == {"gates": [], "sent_by": "pipelines"}


def test_a_field_unknown_to_the_type_is_refused_when_written() -> None:
    with pytest.raises(ValueError, match="sha_256"):
        IngestedEvidence.model_validate({"sha_256": "x"})


def test_stored_evidence_is_read_leniently() -> None:
    read = read_evidence("ingested", {"sha256": "a", "size_bytes": "not a size", "sent_by": "x", "legacy": 1})
    assert isinstance(read, IngestedEvidence)
    assert (read.sha256, read.size_bytes, read.sent_by) == ("a", None, "x")
    assert read_evidence("held", {"anything": 1}) == {"anything": 1}


def _record(seq: int, action: str, evidence: dict[str, Any], **fields: Any) -> tuple[int, AuditRecord]:
    return seq, AuditRecord(event_id=uuid.uuid4(), action=action, name="m", version=1, actor="someone",
                            source="modelreg/probe", occurred_at=datetime(2026, 11, 30, tzinfo=UTC),
                            evidence=evidence, **fields)


def test_the_view_is_built_from_typed_evidence() -> None:
    records = [
        _record(1, "ingested", IngestedEvidence(sha256="a" * 64, size_bytes=5, artifact_uri="s3://b/m/1",
                                                metrics={"auc": 0.9}, run_id=None).as_dict(), to_stage="none"),
        _record(2, "rejected", RejectedEvidence(checks=[{"name": "size", "passed": False}]).as_dict(),
                reason="too big"),
        _record(3, "archived", ArchivedEvidence(archive_uri="s3://cold/m/1").as_dict(), to_stage="archived"),
    ]
    changes = project(records, {}, {})
    row = changes.versions[("m", 1)]
    assert (row["sha256"], row["size_bytes"], row["artifact_uri"], row["metrics"]) == (
        "a" * 64, 5, "s3://b/m/1", {"auc": 0.9})
    assert row["reasons"] == [{"code": "size", "message": "too big"}]
    assert (row["status"], row["stage"], row["archive_uri"]) == ("rejected", "archived", "s3://cold/m/1")


@pytest.mark.parametrize("action", sorted(TYPED_EVIDENCE))
def test_the_published_schema_holds_each_actions_evidence_to_its_type(action: str) -> None:
    model = TYPED_EVIDENCE[action]
    field = next(iter(model.model_fields.keys() - {"sent_by"}))
    envelope = json.loads((Path(__file__).parents[2] / "schemas" / "examples" / "registry.audit.json").read_text())
    data = {"action": action, "name": "m", "actor": "a", "evidence": {"sent_by": "x"}}
    jsonschema.validate({**envelope, "data": data}, SCHEMA)
    renamed = {**data, "evidence": {field + "_renamed": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**envelope, "data": renamed}, SCHEMA)
    free = {**data, "action": "held", "evidence": {field + "_renamed": 1}}
    jsonschema.validate({**envelope, "data": free}, SCHEMA)
