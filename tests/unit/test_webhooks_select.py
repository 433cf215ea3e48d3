"""The webhooks consumer reads only records of a type some active endpoint subscribes to."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.webhooks.app import Webhooks
from shared.consumer import Record


class Endpoints:
    """Stands in for the pool: the `topics` arrays of the active endpoints."""

    def __init__(self, *subscriptions: list[str]) -> None:
        self.subscriptions = subscriptions
        self.queries: list[str] = []

    async def fetch(self, query: str, *args: Any) -> list[tuple[str]]:
        self.queries.append(query)
        return [(topic,) for topic in sorted({t for s in self.subscriptions for t in s})]


def records(*topics: str) -> list[Record]:
    return [Record(topic, 0, offset, b"m", b"{}") for offset, topic in enumerate(topics)]


async def chosen(endpoints: Endpoints, batch: list[Record]) -> list[str]:
    webhooks = Webhooks(SimpleNamespace(settings=None, pool=endpoints))  # type: ignore[arg-type]
    return [r.topic for r in await webhooks.select(batch)]


async def test_no_endpoint_reads_nothing_and_a_wildcard_reads_everything() -> None:
    batch = records("model.promoted", "registry.audit", "model.ingested")
    assert await chosen(Endpoints(), batch) == []
    assert await chosen(Endpoints(["model.promoted"], ["*"]), batch) == [r.topic for r in batch]


async def test_only_the_subscribed_types_are_read_in_their_order() -> None:
    batch = records("registry.audit", "model.promoted", "model.demoted", "model.promoted", "registry.audit")
    endpoints = Endpoints(["model.promoted"], ["model.demoted", "model.archived"])
    assert await chosen(endpoints, batch) == ["model.promoted", "model.demoted", "model.promoted"]
    assert len(endpoints.queries) == 1 and "status = 'active'" in endpoints.queries[0]
