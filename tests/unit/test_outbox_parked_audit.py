"""The audit record of an outbox row the relay parked (shared.outbox.parked_audit)."""

from __future__ import annotations

import json
import uuid

from shared.events import RegistryAudit, parse_event
from shared.outbox import parked_audit


def _parked_value(name: str, version: int) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "correlationid": str(uuid.uuid4()),
                       "data": {"name": name, "version": version}}).encode()


def test_a_parked_row_is_audited_with_its_topic_reason_and_model() -> None:
    value = _parked_value("fraud", 3)
    row = parked_audit("promotion", 42, "model.promoted", "fraud", value, "authorization",
                       "TopicAuthorizationFailedError: model.promoted")
    assert row is not None and row.topic == "registry.audit" and row.key is None
    event = parse_event("registry.audit", row.value)
    assert isinstance(event, RegistryAudit)
    parked = json.loads(value)
    assert (event.data.action, event.data.name, event.data.version) == ("outbox_parked", "fraud", 3)
    assert event.data.evidence == {"topic": "model.promoted", "reason": "authorization", "outbox_id": 42,
                                   "event_id": parked["id"]}
    assert event.data.reason == "authorization: TopicAuthorizationFailedError: model.promoted"
    assert str(event.correlationid) == parked["correlationid"]  # in the version's life
    assert event.source == event.data.actor == "modelreg/promotion"


def test_an_unreadable_row_without_a_model_key_is_audited_as_unknown() -> None:
    row = parked_audit("ingest", 7, "model.ingested", "Not A Name", b"\xff not json", "serialization", "bad")
    assert row is not None
    event = parse_event("registry.audit", row.value)
    assert (event.data.name, event.data.version, event.data.evidence["event_id"]) == ("_unknown", None, None)


def test_a_parked_audit_row_is_not_audited_again() -> None:
    # Kafka refusing registry.audit would refuse the record of the park too: no endless chain.
    assert parked_audit("ingest", 8, "registry.audit", "fraud", _parked_value("fraud", 1), "authorization",
                        "TopicAuthorizationFailedError") is None
