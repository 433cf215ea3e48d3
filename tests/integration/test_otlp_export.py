"""The OTLP exporter of a running service: `modelreg run ingest` as its own process with
`OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local OTLP/HTTP receiver (a small aiohttp server
here that decodes each protobuf ExportTraceServiceRequest). A registration it handles arrives
there as spans of one trace, the one the `model.ingested` record carries onward."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from shared.broker import ensure_topics
from shared.settings import Settings
from tests.integration.test_cli_commands import _environment
from tests.integration.test_cold_storage import own_database  # noqa: F401 (a fixture)
from tests.support import Kafka, cloudevent, eventually, for_model, put_artifact, unique_name

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    attributes: dict[str, object]


class OtlpReceiver:
    """POST /v1/traces: protobuf in (gzip or not), spans kept, an empty success answered."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf", request.content_type
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    self.spans.append(ReceivedSpan(resource.get("service.name", ""), span.name,
                                                   span.trace_id.hex(), attributes))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    found = OtlpReceiver()
    await found.start()
    yield found
    await found.stop()


async def test_a_service_exports_its_spans_over_otlp_http(
        settings: Settings, receiver: OtlpReceiver, own_database: str) -> None:  # noqa: F811
    # ingest of its own (topics, database), so the session's in-process ingest stays out of it
    mine = settings.model_copy(update={"database_url": settings.database_url.__class__(own_database),
                                       "topic_prefix": f"{settings.topic_prefix}otlp{uuid.uuid4().hex[:4]}."})
    await ensure_topics(mine)
    tap = Kafka(mine)
    await tap.start(("model.ingested",))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELREG_", "KAFKA_", "AWS_", "S3_", "OTEL_"))}
    env.update(_environment(mine), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100")
    service = subprocess.Popen([sys.executable, "-m", "services.cli.main", "run", "ingest"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        name = unique_name("otlp")
        artifact = await put_artifact(settings, f"inbox/{name}/model.onnx", b"exported model")
        await tap.publish("model.registered", cloudevent("model.registered", {"name": name, "artifact": artifact}))
        ingested = (await tap.wait_for("model.ingested", for_model(name, 1), timeout=90))[0]
        trace_id = ingested.headers["traceparent"].decode().split("-")[1]

        def exported() -> list[ReceivedSpan]:
            return [s for s in receiver.spans if s.trace_id == trace_id]

        spans = await eventually(lambda: len({s.name for s in exported()} & {
            "ingest handle model.registered", "ingest copy artifact"}) == 2 and exported(), timeout=30)
        assert {s.service for s in spans} == {"modelreg-ingest"}
        handled = next(s for s in spans if s.name == "ingest handle model.registered")
        assert handled.attributes.get("modelreg.model") == name
        # Its statements are exported too: per batch (the version rows are written once its
        # handlers are done), so in the batch's trace rather than each version's.
        statements = await eventually(lambda: [s for s in receiver.spans if s.service == "modelreg-ingest"
                                               and s.attributes.get("db.system") == "postgresql"], timeout=30)
        assert any("model_versions" in str(s.attributes.get("db.statement", "")) for s in statements), \
            {str(s.attributes.get("db.statement", ""))[:60] for s in statements}
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            _, errors = await asyncio.to_thread(service.communicate, timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
            errors = b""
        await tap.stop()
    assert "Traceback" not in errors.decode(errors="replace"), errors.decode(errors="replace")[-3000:]
