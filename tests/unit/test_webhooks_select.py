"""The webhooks consumer reads only records of a type some active endpoint subscribes to."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.webhooks.app import Webhooks, in_publication_order
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


def test_a_gathered_batch_is_read_in_publication_order_each_partition_in_its_own() -> None:
    """A model's ingested event, then its promotion, fetched in one batch topic by topic: the
    promotion must not be delivered first. Within a partition, Kafka's order stands even
    against a producer's clock that went back."""
    promoted = Record("model.promoted", 2, 7, b"m", b"{}", timestamp=1_000_050)
    ingested = Record("model.ingested", 2, 3, b"m", b"{}", timestamp=1_000_010)
    validated = Record("model.validated", 2, 5, b"m", b"{}", timestamp=1_000_030)
    later, skewed = (Record("model.registered", 0, 1, b"x", b"{}", timestamp=1_000_040),
                     Record("model.registered", 0, 2, b"x", b"{}", timestamp=1_000_000))
    batch = [promoted, later, skewed, ingested, validated]
    assert in_publication_order(batch) == [ingested, validated, later, skewed, promoted]
