"""Integration fixtures: the run's topics tapped, services started in-process on demand."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.api.app import ApiService
from services.api.settings import ApiSettings
from shared.broker import ensure_topics
from shared.db import migrate
from shared.events import TOPICS
from shared.runtime import ServiceApp
from shared.settings import Settings
from shared.telemetry import instrument_postgres
from tests.support import PRINCIPAL_ENV, Kafka, as_principal


@pytest.fixture(scope="session", autouse=True)
def _span_exporter() -> InMemorySpanExporter:
    """Every span of the session's in-process services, recorded (the real SDK, in memory)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    instrument_postgres()
    return exporter


@pytest.fixture
def spans(_span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    _span_exporter.clear()
    return _span_exporter


@pytest.fixture(autouse=True)
def _forget_spans(_span_exporter: InMemorySpanExporter) -> None:
    _span_exporter.clear()  # keeps memory flat over a long session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
async def kafka(settings: Settings, endpoints: Any) -> AsyncIterator[Kafka]:
    # Services started by `running` connect as their own Kafka principals, held to their ACLs.
    PRINCIPAL_ENV.update(endpoints.kafka_principal_env)
    await ensure_topics(settings)
    tap = Kafka(settings)
    await tap.start(TOPICS)
    yield tap
    await tap.stop()


async def _delete_run_topics(settings: Settings) -> None:
    """This run's topics (its prefix, and the prefixes its tests derived from it): a stack
    reused across runs does not collect them."""
    from shared.broker import make_admin

    admin = make_admin(settings, "modelreg-tests")
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    await migrate(settings.dsn)
    from shared.db import create_pool

    pool = await create_pool(settings.dsn)
    yield pool
    await pool.close()


_running: dict[str, ServiceApp] = {}


async def running(settings: Settings, *names: str) -> dict[str, ServiceApp]:
    """Start services in-process once per session (each its own pool, consumer and relay)."""
    for name in names:
        if name not in _running:
            app = importlib.import_module(f"services.{name}.app").create_app(as_principal(settings, name))
            await app.start()
            _running[name] = app
    return {name: _running[name] for name in names}


@pytest.fixture(scope="session", autouse=True)
async def _stop_services(settings: Settings) -> AsyncIterator[None]:
    yield
    for app in _running.values():
        await app.stop()
    _running.clear()
    await _delete_run_topics(settings)


@pytest.fixture(scope="session")
async def ingest(settings: Settings, kafka: Kafka) -> ServiceApp:
    return (await running(settings, "ingest"))["ingest"]


@pytest.fixture(scope="session")
async def pipeline(settings: Settings, kafka: Kafka) -> dict[str, ServiceApp]:
    return await running(settings, "ingest", "validation", "promotion", "archival", "audit")


@contextlib.asynccontextmanager
async def running_api(settings: Settings, **api_settings: Any) -> AsyncIterator[ApiService]:
    """The HTTP API in this process on a free port, with these API settings, for a block."""
    service = ApiService(settings, ApiSettings(port=0, **api_settings))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture(scope="module")
async def api_service(settings: Settings, pipeline) -> AsyncIterator[ApiService]:
    """The HTTP API over the running pipeline (its JWKS is what deployment systems fetch)."""
    async with running_api(settings) as service:
        yield service
