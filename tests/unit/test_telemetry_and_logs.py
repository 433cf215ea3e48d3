"""Trace context travels in headers or the CloudEvent extension; logs are JSON lines that
carry the correlation id and trace id of the event being handled."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace

from shared import logs, telemetry

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def trace_id_of(context) -> int:  # type: ignore[no-untyped-def]
    return trace.get_current_span(context).get_span_context().trace_id


def test_the_kafka_header_wins_then_the_extension_then_the_fallback() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    assert trace_id_of(telemetry.parent_from([("traceparent", TRACEPARENT.encode())], other)) == \
        0x0AF7651916CD43DD8448EB211C80319C
    assert trace_id_of(telemetry.parent_from([], other)) == 0x11111111111111111111111111111111
    assert trace_id_of(telemetry.parent_from([], None, fallback=TRACEPARENT)) == 0x0AF7651916CD43DD8448EB211C80319C
    assert telemetry.parent_from([("content-type", b"x")]) is None


def test_a_traceparent_header_that_is_null_or_not_text_is_no_trace_and_no_error() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    assert trace_id_of(telemetry.parent_from([("traceparent", None)], other)) == 0x11111111111111111111111111111111
    junk = telemetry.parent_from([("traceparent", b"\xff\xfe"), ("tracestate", None)])
    assert not trace.get_current_span(junk).get_span_context().is_valid


def test_a_new_trace_is_valid_and_propagates_through_a_span() -> None:
    parent = telemetry.new_trace()
    assert trace.get_current_span(parent).get_span_context().is_valid
    with telemetry.span("work", parent=parent):
        header = telemetry.current_traceparent()["traceparent"]
    assert header.split("-")[1] == format(trace_id_of(parent), "032x")


def test_a_span_without_an_sdk_gives_back_the_context_it_found_even_when_its_work_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no SDK records spans, a span only makes its parent current, and undoes that. (An
    earlier test in the same process, e.g. a service started in it, may have installed an SDK:
    the no-SDK path is chosen here whatever the process's global tracer provider is.)"""
    monkeypatch.setattr(telemetry, "recording", lambda: False)
    parent = telemetry.parent_from([("traceparent", TRACEPARENT.encode())])
    try:
        with telemetry.span("handle", parent=parent):
            assert telemetry.current_traceparent()["traceparent"] == TRACEPARENT
            raise ValueError("the handler failed")
    except ValueError:
        pass
    assert telemetry.current_traceparent() == {}
    with telemetry.span("nested", parent=parent), telemetry.span("inner"):
        assert telemetry.current_traceparent()["traceparent"] == TRACEPARENT


def test_json_logs_carry_correlation_and_trace() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("ingest"))
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = logs.correlation.set("c0ffee")
    try:
        with telemetry.span("handle", parent=telemetry.parent_from([("traceparent", TRACEPARENT.encode())])):
            logger.info("copied %s", "artifact", extra={"model": "fraud"})
    finally:
        logs.correlation.reset(token)
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "copied artifact" and entry["service"] == "ingest"
    assert entry["correlationid"] == "c0ffee" and entry["model"] == "fraud"
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert entry["level"] == "info" and entry["time"].endswith("+00:00")
