"""The input boundary: whatever bytes arrive, parsing answers with an `InvalidEvent` (a dead
letter) or an event, never another exception, and cheaply."""

from __future__ import annotations

import json
import uuid

import pytest

import shared.consumer
from shared.consumer import BatchProcessor, Record, ServiceHandlers
from shared.events import MAX_JSON_DEPTH, InvalidEvent, json_depth, parse_event
from tests.support import cloudevent

ARTIFACT = {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("text, depth", [
    (b"{}", 1), (b"1", 0), (b'{"a": [1, {"b": []}]}', 4), (nested(64), 64), (nested(65), 65),
    (b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 1),
    (b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', 1),
])
def test_json_depth_counts_nesting_not_brackets_in_strings(text: bytes, depth: int) -> None:
    found = json_depth(text, MAX_JSON_DEPTH)
    assert found == depth if depth <= MAX_JSON_DEPTH else found > MAX_JSON_DEPTH


@pytest.mark.parametrize("value", [
    b'{"data": ' + nested(200_000) + b"}",
    nested(300),
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
])
def test_deep_nesting_is_refused_before_any_parser_recurses(value: bytes) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parse_event("model.registered", value)
    assert refused.value.kind == "too_deep"


def test_brackets_in_a_description_are_not_nesting() -> None:
    event = cloudevent("model.registered", {"name": "m", "artifact": ARTIFACT,
                                            "description": "[" * 500 + "{" * 500})
    assert parse_event("model.registered", json.dumps(event).encode()).data.name == "m"


@pytest.mark.parametrize("value, kind", [
    (b"\xff\xfe\x00", "not_json"),
    (b'{"specversion": "1.0", "id": "\xff"}', "not_json"),
    (b"[1, 2", "not_json"),
    (b'"just a string"', "not_cloudevent"),
    (b"1e999999", "not_cloudevent"),
])
def test_malformed_bytes_are_classified(value: bytes, kind: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parse_event("model.registered", value)
    assert refused.value.kind == kind


@pytest.mark.parametrize("extra, message", [
    ({f"x{i}": "v" for i in range(33)}, "33 extension attributes"),
    ({"note": "n" * 4097}, "at most 4096 characters"),
    ({"note": {"nested": "object"}}, "must be a string"),
])
def test_extension_attributes_are_bounded(extra: dict, message: str) -> None:
    event = cloudevent("model.registered", {"name": "m", "artifact": ARTIFACT}) | extra
    with pytest.raises(InvalidEvent) as refused:
        parse_event("model.registered", json.dumps(event).encode())
    assert refused.value.kind == "schema_violation"
    assert message in refused.value.message


def test_a_bug_while_decoding_makes_a_dead_letter_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(topic: str, value: bytes | None) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(shared.consumer, "parse_event", broken)
    processor = BatchProcessor(None, ServiceHandlers("probe"))  # type: ignore[arg-type]
    delivery = processor.decode(Record("model.registered", 0, 7, b"k", b"{}"))
    assert delivery.event is None and delivery.error is not None
    assert delivery.error.kind == "undecodable"
    assert delivery.error.message == "RecursionError: maximum recursion depth exceeded"


def test_a_valid_event_still_parses_with_its_extensions() -> None:
    event = cloudevent("model.registered", {"name": "m", "artifact": ARTIFACT},
                       traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01", partitionkey="m")
    parsed = parse_event("model.registered", json.dumps(event).encode())
    assert parsed.id == uuid.UUID(event["id"])
    assert parsed.model_extra == {"traceparent": event["traceparent"], "partitionkey": "m"}
