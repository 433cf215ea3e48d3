"""A QA result that carries no trace context joins its version's trace: measured from outside,
with each service its own process exporting nothing (the no-op tracer passes ids along), as in
a deployment without an OTLP collector."""

from __future__ import annotations

import json

from bench.fleet import Fleet
from shared.events import TOPICS
from shared.settings import Settings
from tests.integration.test_pipeline import evaluated, promoted, registered
from tests.integration.test_resilience import _env, isolated  # noqa: F401 - a fixture
from tests.support import Kafka, for_model, put_artifact, unique_name

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def trace_of(headers: dict[str, bytes]) -> str | None:
    parent = headers.get("traceparent")
    return parent.decode().split("-")[1] if parent else None


async def test_a_qa_result_without_trace_context_continues_the_versions_trace(isolated: Settings) -> None:  # noqa: F811
    settings = isolated
    kafka = Kafka(settings)
    await kafka.start(TOPICS)
    fleet = Fleet(lambda _name: _env(settings))
    for service in ("ingest", "validation", "promotion"):
        fleet.start(service)
    try:
        name = unique_name("life-trace")
        artifact = await put_artifact(settings, f"inbox/{name}.pkl", b"\x80\x04K\x01.")
        event = registered(name, artifact)
        await kafka.producer.send_and_wait(
            settings.topic("model.registered"), json.dumps(event).encode(), key=name.encode(),
            headers=[("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode())])
        [request] = await kafka.wait_for("qa.requested", for_model(name, 1), timeout=90)
        assert trace_of(request.headers) == TRACE_ID
        answer = evaluated(name, 1, {"auc": 0.97})  # a plain client: no headers, no traceparent
        await kafka.publish("metrics.evaluated", answer)
        [production] = await kafka.wait_for("model.promoted", promoted(name, 1, "production"), timeout=60)
        assert trace_of(production.headers) == TRACE_ID
        audits = kafka.matching("registry.audit", lambda s: for_model(name, 1)(s) and s.data["action"] == "promoted")
        assert {trace_of(a.headers) for a in audits} == {TRACE_ID}
    finally:
        fleet.stop()
        await kafka.stop()
