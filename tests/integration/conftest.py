"""Integration fixtures: the run's topics tapped, services started in-process on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.broker import ensure_topics
from shared.db import migrate
from shared.events import TOPICS
from shared.settings import Settings
from tests.support import Kafka


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
async def kafka(settings: Settings) -> AsyncIterator[Kafka]:
    await ensure_topics(settings)
    tap = Kafka(settings)
    await tap.start(TOPICS)
    yield tap
    await tap.stop()


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    await migrate(settings.dsn)
    from shared.db import create_pool

    pool = await create_pool(settings.dsn)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def ingest(settings: Settings, kafka: Kafka):  # type: ignore[no-untyped-def]
    from services.ingest.app import create_app

    app = create_app(settings)
    await app.start()
    yield app
    await app.stop()
