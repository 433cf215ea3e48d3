"""Ops' view: one trace per model version, metrics that match what was sent, readiness that
follows PostgreSQL, and a replay of the audit topic that reproduces the read tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from services.audit.replay import replay
from shared.keys import Keyring
from shared.settings import Settings
from tests.integration.test_pipeline import QA, evaluated, promoted, register
from tests.support import Kafka, cloudevent, eventually, put_artifact, unique_name


async def test_one_trace_spans_every_service_a_promoted_version_went_through(
        settings: Settings, kafka: Kafka, pipeline, spans) -> None:
    name = unique_name("life")
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.95}}).run())
    try:
        await register(settings, kafka, name, 1)
        await kafka.wait_for("model.promoted", promoted(name, 1, "production"))
    finally:
        qa.cancel()
    await asyncio.sleep(0.5)  # the relay's producer span ends once Kafka acknowledged
    mine = [s for s in spans.get_finished_spans() if (s.attributes or {}).get("modelreg.model") == name]
    handled = {s.name for s in mine}
    for expected in ("ingest handle model.registered", "validation handle model.ingested",
                     "promotion handle model.validated", "promotion handle metrics.evaluated",
                     "ingest copy artifact", "validation inspect artifact", "promotion verify artifact"):
        assert expected in handled, (expected, handled)
    trace_ids = {s.context.trace_id for s in mine}
    assert len(trace_ids) == 1, f"{len(trace_ids)} traces for one version: {handled}"
    trace_id = trace_ids.pop()
    in_trace = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    assert any(s.name == "promotion publish model.promoted" for s in in_trace)
    assert any(s.name.startswith("ingest publish model.ingested") for s in in_trace)
    assert any((s.attributes or {}).get("db.system") == "postgresql" for s in in_trace), "no PostgreSQL spans"
    services = {s.name.split()[0] for s in in_trace}
    assert {"ingest", "validation", "promotion"} <= services


def _samples(text: str, name: str, **labels: str) -> dict[str, float]:
    """Every exported series of `name` whose labels include `labels`: label text -> value."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            found[match.group(1)] = float(match.group(2))
    return found


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum over matching series (a counter never incremented is not exported yet: 0)."""
    return sum(_samples(text, name, **labels).values())


async def _scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def test_metrics_count_what_was_sent_and_lag_drains(settings: Settings, kafka: Kafka, pipeline) -> None:
    port = pipeline["ingest"].health.port
    _, before = await _scrape(port)
    consumed_before = _metric(before, "modelreg_events_consumed_total", service="ingest", topic="model.registered")
    artifact = await put_artifact(settings, f"inbox/{uuid.uuid4().hex}", b"burst")
    names = [unique_name("burst") for _ in range(60)]
    for name in names:
        registered = cloudevent("model.registered", {"name": name, "artifact": artifact})
        await kafka.producer.send(settings.topic("model.registered"), json.dumps(registered).encode(),
                                  key=name.encode())
    await kafka.producer.flush()
    await kafka.wait_for("model.ingested", lambda s: s.data["name"] in names, count=60)

    async def drained() -> bool:
        _, text = await _scrape(port)
        consumed = _metric(text, "modelreg_events_consumed_total", service="ingest", topic="model.registered")
        # one lag series per partition ingest consumes, each exported and at zero: a gauge that
        # is never exported is a failure, not a lag of 0
        lags = _samples(text, "modelreg_consumer_lag", service="ingest", topic="model.registered")
        partitions = {re.search(r'partition="(\d+)"', labels).group(1) for labels in lags}  # type: ignore[union-attr]
        return (consumed - consumed_before == 60 and partitions == {str(p) for p in range(settings.topic_partitions)}
                and all(value == 0 for value in lags.values()))

    assert await eventually(drained, timeout=20)
    _, text = await _scrape(port)
    assert _metric(text, "modelreg_events_emitted_total", service="ingest", topic="model.ingested") >= 60
    assert "modelreg_handler_seconds_bucket" in text and "modelreg_outbox_backlog" in text
    for service, app in pipeline.items():
        status, _ = await _scrape(app.health.port, "/healthz")
        assert status == 200, service
        status, body = await _scrape(app.health.port, "/readyz")
        assert status == 200, (service, body)


class Proxy:
    """A TCP proxy in front of PostgreSQL that the test can cut and restore."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.links):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[Proxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(settings.dsn)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.open()
    yield proxy
    with contextlib.suppress(Exception):
        await proxy.cut()


async def test_readiness_follows_postgresql(settings: Settings, proxy: Proxy) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from services.archival.app import create_app

    parts = urlsplit(settings.dsn)
    through_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    prefix = f"{settings.topic_prefix}ready{uuid.uuid4().hex[:4]}."
    app = create_app(settings.model_copy(update={"database_url": settings.database_url.__class__(through_proxy),
                                                 "topic_prefix": prefix}))
    await app.start()
    try:
        assert app.health is not None
        status, _ = await _scrape(app.health.port, "/readyz")
        assert status == 200
        await proxy.cut()

        async def unready() -> bool:
            status, body = await _scrape(app.health.port, "/readyz")
            return status == 503 and json.loads(body)["checks"]["postgres"] != "ok"

        assert await eventually(unready, timeout=10)
        status, _ = await _scrape(app.health.port, "/healthz")
        assert status == 200  # alive, only not ready
        await proxy.open()  # PostgreSQL is back

        async def ready() -> bool:
            status, _ = await _scrape(app.health.port, "/readyz")
            return status == 200

        assert await eventually(ready, timeout=20)
    finally:
        await app.stop()


async def test_replay_rebuilds_the_read_tables_and_names_a_row_edited_by_hand(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    prefix = f"replay-{uuid.uuid4().hex[:6]}-"
    artifact = await put_artifact(settings, f"inbox/{uuid.uuid4().hex}", b"replayed model")
    for i in range(1000):
        name = f"{prefix}{i % 100}"
        registered = cloudevent("model.registered", {"name": name, "artifact": artifact})
        await kafka.producer.send(settings.topic("model.registered"), json.dumps(registered).encode(),
                                  key=name.encode())
    await kafka.producer.flush()
    await kafka.wait_for("model.validated", lambda s: s.data["name"].startswith(prefix), count=1000, timeout=120)
    await kafka.publish("metrics.evaluated", evaluated(f"{prefix}0", 10, {"accuracy": 0.9}, suite="smoke"))
    await kafka.wait_for("model.promoted", promoted(f"{prefix}0", 10, "production"), timeout=120)

    keyring = Keyring.load(settings.keyring_file)

    async def settled() -> bool:  # the audit writer has stored every authentic record published so far
        published = [uuid.UUID(s.event["id"]) for s in kafka.matching("registry.audit")
                     if keyring.event_problem(s.event) is None]  # forgeries other tests sent are refused
        stored = await db.fetchval("SELECT count(*) FROM audit_log WHERE event_id = ANY($1::uuid[])", published)
        # this test's models' events all sent (rows other tests left, e.g. parked, are theirs)
        unsent = await db.fetchval("SELECT count(*) FROM outbox WHERE key LIKE $1 || '%'", prefix)
        return stored == len(set(published)) and unsent == 0

    await eventually(settled, timeout=60)
    await asyncio.sleep(1)
    await eventually(settled, timeout=60)
    report = await replay(settings)
    assert report.events >= 1000 * 3
    assert report.differences == [], [str(d) for d in report.differences[:5]]

    await db.execute("UPDATE view_versions SET stage = 'production' WHERE name = $1 AND version = 3", f"{prefix}7")
    report = await replay(settings)
    assert [str(d) for d in report.differences] == [
        f"view_versions ({prefix}7, 3): stage: live 'production' != replay 'staging'"]
    await db.execute("UPDATE view_versions SET stage = 'staging' WHERE name = $1 AND version = 3", f"{prefix}7")
