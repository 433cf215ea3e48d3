"""Dead letters without I/O: a DLQ event as a row, the original bytes shown as text only when
they are text, the `redriven` audit record, `--since`, and who may redrive on Kafka."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.cli.dlq import parse_since
from shared.consumer import Record, dead_letter_rows
from shared.dead_letters import BadPayload, letter_of, model_of, payload_text, redriven_audit
from shared.events import InvalidEvent, RegistryDlq, parse_event
from shared.kafka_acls import acl_plan, may_write

NOW = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)


def _dlq_event(value: bytes, *, key: bytes | None = b"fraud-model", event: object = None) -> RegistryDlq:
    record = Record("model.registered", 2, 41, key, value)
    letter_row = dead_letter_rows("ingest", record, InvalidEvent("not_json", "expected a JSON object"), event)[0]
    return parse_event("registry.dlq", letter_row.value)  # type: ignore[return-value]


def test_a_letter_keeps_the_original_bytes_topic_position_and_error() -> None:
    original = b"\x00\xffnot json at all"
    event = _dlq_event(original)
    letter = letter_of(event)
    assert letter.id == event.id
    assert (letter.service, letter.kind, letter.original_topic, letter.partition, letter.offset, letter.key) == (
        "ingest", "not_json", "model.registered", 2, 41, "fraud-model")
    assert letter.payload == original
    assert letter.original_event_id is None  # it never parsed: no consumer recorded an event id


def test_a_letter_of_a_parsed_event_names_the_event_its_consumer_recorded() -> None:
    from shared.events import MetricsEvaluated, MetricsEvaluatedData, new_event

    parsed = new_event(MetricsEvaluated, MetricsEvaluatedData.model_validate(
        {"name": "fraud-model", "version": 3, "suite": "offline-eval", "environment": "offline",
         "metrics": {"auc": 0.9}, "passed": True}), source="qa/tests")
    letter = letter_of(_dlq_event(parsed.to_json(), event=parsed))
    assert letter.original_event_id == parsed.id
    assert letter.correlation_id == parsed.correlation


def test_a_payload_that_is_not_base64_is_refused_with_the_event_named() -> None:
    event = _dlq_event(b"{}")
    broken = event.model_copy(update={"data": event.data.model_copy(update={"payload_b64": "!!not base64!!"})})
    with pytest.raises(BadPayload, match=str(event.id)):
        letter_of(broken)


@pytest.mark.parametrize(("payload", "text"), [
    (b'{"a": 1}', '{"a": 1}'),
    ("naïve\n\tline".encode(), "naïve\n\tline"),
    (b"\xff\xfe", None),             # not UTF-8
    (b"abc\x00def", None),           # a NUL: binary, whatever its encoding
    (b"\x1b[31mred", None),          # terminal escapes are not shown raw
])
def test_payload_text_only_for_printable_utf8(payload: bytes, text: str | None) -> None:
    assert payload_text(payload) == text


def test_the_audit_record_names_the_model_only_when_the_key_is_a_model_name() -> None:
    assert model_of("fraud-model") == "fraud-model"
    assert model_of("Not A Name!") == "_unknown"
    assert model_of(None) == "_unknown"


def test_the_redriven_audit_record_carries_the_requester_and_the_letter() -> None:
    letter_id, event_id = uuid.uuid4(), uuid.uuid4()
    data = redriven_audit({"id": letter_id, "key": "fraud-model", "original_topic": "metrics.evaluated",
                           "service": "promotion", "kind": "unknown_version", "partition": 1, "offset": 7,
                           "original_event_id": event_id, "redrive_requested_by": "ops/alice",
                           "redrive_requested_at": NOW})
    assert (data.action, data.name, data.actor) == ("redriven", "fraud-model", "ops/alice")
    assert data.evidence["dlq_event_id"] == str(letter_id)
    assert data.evidence["original_event_id"] == str(event_id)
    assert data.evidence["topic"] == "metrics.evaluated"


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", NOW - timedelta(seconds=90)),
    ("15m", NOW - timedelta(minutes=15)),
    ("2h", NOW - timedelta(hours=2)),
    ("7d", NOW - timedelta(days=7)),
    ("2026-11-29T04:00:00Z", datetime(2026, 11, 29, 4, tzinfo=UTC)),
    ("2026-11-29T06:00:00+02:00", datetime(2026, 11, 29, 4, tzinfo=UTC)),
])
def test_since_takes_rfc3339_or_an_age(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "5x", "2026-11-29T04:00:00", ""])
def test_since_refuses_what_it_cannot_place_in_time(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text, NOW)


def test_the_audit_writer_reads_the_dlq_and_may_republish_to_every_consumed_topic() -> None:
    plan = acl_plan("p.")
    assert any(r.principal == "audit" and r.name == "p.registry.dlq" and r.operation == "READ" for r in plan)
    for topic in ("model.registered", "metrics.evaluated", "model.ingested", "promotion.requested"):
        assert may_write("audit", topic, "p.")
    # ... and no one else gained anything: ops still writes only its requests.
    assert not may_write("ops", "model.registered", "p.")
    assert not may_write("ingest", "metrics.evaluated", "p.")


def test_dead_letter_rows_round_trip_through_base64() -> None:
    value = bytes(range(256))
    assert base64.b64decode(_dlq_event(value).data.payload_b64) == value
