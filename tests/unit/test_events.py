"""The event contract: strict data, permissive envelope, every kind of bad input classified."""

from __future__ import annotations

import json
import uuid

import pytest

from shared.events import (
    CATALOGUE,
    MAX_MESSAGE_BYTES,
    ArtifactRef,
    ArtifactSpec,
    InvalidEvent,
    ModelIngested,
    ModelIngestedData,
    ModelRegistered,
    ModelRegisteredData,
    follow_up,
    new_event,
    parse_event,
)
from shared.schemagen import example

SHA = "0" * 64


def registered(**data_overrides) -> dict:
    event = example(CATALOGUE["model.registered"])
    event["data"].update(data_overrides)
    return event


def parse(event: dict, topic: str = "model.registered"):
    return parse_event(topic, json.dumps(event).encode())


def kind_of(value: bytes | None, topic: str = "model.registered") -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(topic, value)
    return caught.value.kind


@pytest.mark.parametrize("topic", list(CATALOGUE))
def test_every_example_parses_as_its_own_type(topic: str) -> None:
    event = parse(example(CATALOGUE[topic]), topic)
    assert event.type == topic and event.topic == topic


@pytest.mark.parametrize("name", ["a", "fraud-detector", "m.v2_x", "0" * 128])
def test_valid_model_names(name: str) -> None:
    assert parse(registered(name=name) | {"subject": name}).data.name == name


@pytest.mark.parametrize("name", ["", "Fraud", "-lead", ".dot", "a" * 129, "a/b", "a b", "_unknown"])
def test_invalid_model_names_are_schema_violations(name: str) -> None:
    event = registered(name=name)
    event["subject"] = "ok"
    assert kind_of(json.dumps(event).encode()) == "schema_violation"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_metrics_must_be_finite(value: str) -> None:
    text = json.dumps(registered(metrics={"auc": 1.0})).replace("1.0", value)
    assert kind_of(text.encode()) == "schema_violation"


def test_maps_hold_at_most_256_entries() -> None:
    ok = registered(tags={f"k{i}": "v" for i in range(256)})
    assert len(parse(ok).data.tags) == 256
    too_many = registered(tags={f"k{i}": "v" for i in range(257)})
    assert kind_of(json.dumps(too_many).encode()) == "schema_violation"


def test_unknown_data_fields_are_rejected_but_extension_attributes_kept() -> None:
    assert kind_of(json.dumps(registered(colour="red")).encode()) == "schema_violation"
    event = registered() | {"traceparent": "00-abc-def-01", "tenant": "risk"}
    assert parse(event).model_extra == {"traceparent": "00-abc-def-01", "tenant": "risk"}


def test_extension_attribute_names_follow_cloudevents() -> None:
    assert kind_of(json.dumps(registered() | {"Bad-Name": 1}).encode()) == "schema_violation"


def test_strict_types_no_coercion() -> None:
    event = registered()
    event["data"]["artifact"]["size_bytes"] = "10"
    assert kind_of(json.dumps(event).encode()) == "schema_violation"


@pytest.mark.parametrize("field,value", [
    ("specversion", "0.3"), ("id", "not-a-uuid"), ("time", "yesterday"),
    ("time", "2026-11-27T10:00:00"), ("datacontenttype", "text/plain"), ("source", ""),
])
def test_envelope_attributes_are_checked(field: str, value: str) -> None:
    assert kind_of(json.dumps(registered() | {field: value}).encode()) == "schema_violation"


def test_subject_must_be_the_model_name() -> None:
    assert kind_of(json.dumps(registered() | {"subject": "other-model"}).encode()) == "schema_violation"


def test_version_must_be_positive_or_absent() -> None:
    assert parse(registered(version=None)).data.version is None
    assert kind_of(json.dumps(registered(version=0)).encode()) == "schema_violation"


@pytest.mark.parametrize("value,kind", [
    (None, "empty"),
    (b"\xff\xfe", "not_json"),
    (b"[1, 2]", "not_cloudevent"),
    (b'{"data": {}}', "not_cloudevent"),
    (json.dumps(registered() | {"type": "model.ingested"}).encode(), "unknown_type"),
    (b" " * (MAX_MESSAGE_BYTES + 1), "too_large"),
])
def test_bad_input_is_classified(value: bytes | None, kind: str) -> None:
    assert kind_of(value) == kind


def test_unknown_topic() -> None:
    assert kind_of(b"{}", topic="model.unheard-of") == "unknown_type"


def test_new_event_sets_every_attribute_and_follow_up_keeps_the_correlation() -> None:
    data = ModelRegisteredData(name="m", artifact=ArtifactSpec(uri="s3://b/k", sha256=SHA, size_bytes=1))
    start = new_event(ModelRegistered, data, source="pipelines/x")
    assert start.correlationid == start.id == start.causationid and start.subject == "m"
    nxt = follow_up(start, ModelIngested, ModelIngestedData(
        name="m", version=1, artifact=ArtifactRef(uri="s3://r/k", sha256=SHA)), source="modelreg/ingest")
    assert nxt.correlationid == start.id and nxt.causationid == start.id and nxt.id != start.id
    again = parse_event("model.ingested", nxt.to_json())
    assert again == nxt


def test_a_pipeline_may_omit_correlation_attributes() -> None:
    event = registered()
    del event["correlationid"], event["causationid"]
    parsed = parse(event)
    assert parsed.correlation == uuid.UUID(event["id"])


def test_nul_characters_are_refused_at_the_boundary() -> None:
    """PostgreSQL cannot store them; a literal backslash-u sequence is fine."""
    text = json.dumps(registered(description="bad\x00text")).encode()
    assert kind_of(text) == "schema_violation"
    assert parse(registered(description="a \\u0000 literal")).data.description == "a \\u0000 literal"
