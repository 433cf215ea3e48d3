"""Tracing: one trace per model version, carried across services in W3C `traceparent` headers.

Consumers continue the trace of the record they handle (its Kafka header, else the CloudEvent's
`traceparent` extension attribute, else the trace the service remembers for that version);
everything a handler emits carries the handler's span as parent; the outbox relay publishes
each record in a producer span of that trace. Spans are exported over OTLP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set; otherwise no SDK is installed and spans cost next to
nothing (the API's no-op tracer still passes trace ids along).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)
_propagator = TraceContextTextMapPropagator()
_configured = False

tracer = trace.get_tracer("modelreg")


def setup_tracing(service: str, otlp_endpoint: str | None) -> None:
    """Install an exporting SDK when an OTLP endpoint is configured (once per process)."""
    global _configured
    if _configured or not otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"modelreg-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    instrument_postgres()
    _configured = True
    log.info("tracing: exporting spans over OTLP to %s", otlp_endpoint)


def instrument_postgres() -> None:
    """Spans for every asyncpg query (only worth it when spans are recorded)."""
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    except ImportError:  # pragma: no cover - the extra is not installed
        return
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # its __init__ is unannotated
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def parent_from(headers: Iterable[tuple[str, bytes]], extension: Any = None,
                fallback: str | None = None) -> otel_context.Context | None:
    """The context a consumed record continues: its header, its event's extension, a fallback."""
    carrier = {}
    for key, value in headers:
        # Anyone who may write the topic sets headers: bytes that are not text, or none.
        if (key == "traceparent" or key == "tracestate") and isinstance(value, bytes):
            carrier[key] = value.decode(errors="replace")
    if "traceparent" not in carrier and isinstance(extension, str):
        carrier["traceparent"] = extension
    if "traceparent" not in carrier and fallback:
        carrier["traceparent"] = fallback
    if "traceparent" not in carrier:
        return None
    return _propagator.extract(carrier)


def new_trace() -> otel_context.Context:
    """A fresh trace to parent an event that arrived without one."""
    span_context = SpanContext(trace_id=random.getrandbits(128) or 1, span_id=random.getrandbits(64) or 1,
                               is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def current_traceparent() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for headers of what we emit."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def recording() -> bool:
    """Whether an SDK records spans (tests, or an OTLP endpoint): otherwise skip the work."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, parent: otel_context.Context | None = None,
         attributes: dict[str, Any] | None = None) -> Iterator[Span]:
    """A span continuing `parent` (else the current context). Where no SDK records spans, the
    parent's context is simply made current: what the API's no-op tracer would do in several
    times the CPU (a handler's span was about 15 us of every event a service handled)."""
    if not recording():
        token = otel_context.attach(parent) if parent is not None else None
        try:
            yield trace.get_current_span()
        finally:
            if token is not None:
                otel_context.detach(token)
        return
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes or {}) as current:
        yield current
