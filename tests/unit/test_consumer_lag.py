"""Consumer lag (shared.broker), read through aiokafka's public consumer calls: assignment(),
highwater(), last_stable_offset() and position(). The metric and promotion's expiry read it; a real consumer's is
checked on Kafka in tests/integration/test_observability.py."""

from __future__ import annotations

from aiokafka import TopicPartition
from faststream.kafka import TestKafkaBroker

from shared.broker import make_broker, partition_lags, subscribe, subscription_consumer, topic_lags
from shared.settings import load_settings

A0, A1, B0 = TopicPartition("t.a", 0), TopicPartition("t.a", 1), TopicPartition("t.b", 0)


class FakeConsumer:
    """An assignment with high-water marks (None: never fetched) and positions."""

    def __init__(self, highwater: dict[TopicPartition, int | None], position: dict[TopicPartition, int],
                 stable: dict[TopicPartition, int | None] | None = None) -> None:
        self._highwater = highwater
        self._position = position
        self._stable = stable or {}

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._highwater[partition]

    def last_stable_offset(self, partition: TopicPartition) -> int | None:
        return self._stable.get(partition, -1)  # -1: what aiokafka answers reading uncommitted

    async def position(self, partition: TopicPartition) -> int:
        return self._position[partition]


async def test_lag_is_the_records_between_position_and_high_water_mark() -> None:
    consumer = FakeConsumer({A0: 10, A1: 5, B0: None}, {A0: 7, A1: 5, B0: 0})
    assert await partition_lags(consumer) == {A0: 3, A1: 0, B0: None}


async def test_a_position_past_the_last_fetched_high_water_mark_is_no_lag() -> None:
    assert await partition_lags(FakeConsumer({A0: 10}, {A0: 12})) == {A0: 0}


async def test_reading_committed_records_the_lag_ends_at_the_last_stable_offset() -> None:
    """Records of a transaction still open (past the last stable offset) cannot be read yet:
    they are no lag of this consumer's."""
    consumer = FakeConsumer({A0: 10, A1: 10}, {A0: 6, A1: 6}, stable={A0: 8, A1: None})
    assert await partition_lags(consumer) == {A0: 2, A1: 4}


def test_a_topics_lag_is_per_partition_number() -> None:
    assert topic_lags({A0: 3, A1: 0, B0: 9}, "t.a") == {0: 3, 1: 0}
    assert topic_lags({A0: 3, A1: 0, B0: 9}, "t.b") == {0: 9}


def test_a_topics_lag_is_unknown_without_partitions_or_with_one_never_fetched() -> None:
    assert topic_lags({}, "t.a") is None
    assert topic_lags({B0: 0}, "t.a") is None  # assigned other topics only (a rebalance)
    assert topic_lags({A0: 0, A1: None, B0: 0}, "t.a") is None


async def test_a_subscription_has_no_consumer_until_it_runs_on_kafka() -> None:
    settings = load_settings()

    class Processor:
        consumer = "ingest"

        async def process(self, records: object) -> None:
            pass

    broker = make_broker(settings, "test")
    subscriber = subscribe(broker, settings, Processor(), ("model.registered",))
    assert subscription_consumer(None) is None
    assert subscription_consumer(subscriber) is None
    async with TestKafkaBroker(broker):  # no Kafka: no consumer, so no lag is claimed
        assert subscription_consumer(subscriber) is None


def test_the_lag_gauge_drops_the_partitions_a_rebalance_took_away() -> None:
    """Another instance reports them now; a series left behind would show a lag frozen at
    whatever it was when the partition moved."""
    from shared.metrics import CONSUMER_LAG, report_lags

    def series() -> dict[tuple[str, str, str], float]:
        return {(s.labels["service"], s.labels["topic"], s.labels["partition"]): s.value
                for metric in CONSUMER_LAG.collect() for s in metric.samples
                if s.labels.get("service") == "lag-test"}

    reported = report_lags("lag-test", {("t.a", 0): 3, ("t.a", 1): 5}, set())
    assert series() == {("lag-test", "t.a", "0"): 3, ("lag-test", "t.a", "1"): 5}
    reported = report_lags("lag-test", {("t.a", 1): 0, ("t.b", 0): None}, reported)
    assert series() == {("lag-test", "t.a", "1"): 0}  # t.a 0 went elsewhere; t.b 0 not fetched yet
    report_lags("lag-test", {}, reported)
    assert series() == {}
