"""The services' Kafka subscription (shared.broker.subscribe) on FastStream's TestKafkaBroker:
no broker, only the wiring between FastStream and the batch processor (the topic prefix, the
records handed over unparsed). The processing itself is tested on real Kafka (tests/integration)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from faststream.kafka import TestKafkaBroker

from shared.broker import make_broker, subscribe
from shared.consumer import Record
from shared.settings import load_settings


class RecordingProcessor:
    """Stands in for shared.consumer.BatchProcessor: what subscribe() hands over, batch by batch."""

    consumer = "ingest"

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[Record]] = []
        self.fail = fail

    async def process(self, records: Sequence[Record]) -> None:
        self.batches.append(list(records))
        if self.fail:
            raise RuntimeError("the batch could not be applied")


@pytest.fixture
def prefixed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MODELREG_TOPIC_PREFIX", "t7.")
    return load_settings()


async def test_records_reach_the_processor_unparsed_with_the_prefix_taken_off(prefixed) -> None:
    broker = make_broker(prefixed, "test")
    processor = RecordingProcessor()
    subscribe(broker, prefixed, processor, ("model.registered", "metrics.evaluated"))
    value = b'{"not": "even a cloudevent"}'  # parsing (and dead-lettering) is the processor's job
    async with TestKafkaBroker(broker) as test:
        await test.publish(value, "t7.model.registered", key=b"fraud", headers={"content-type": "x/y"})
        await test.publish(b"[]", "t7.metrics.evaluated", key=b"churn")
    assert [[(r.topic, r.key, r.value) for r in batch] for batch in processor.batches] == [
        [("model.registered", b"fraud", value)], [("metrics.evaluated", b"churn", b"[]")]]
    assert ("content-type", b"x/y") in processor.batches[0][0].headers


async def test_a_topic_of_another_prefix_is_not_subscribed(prefixed) -> None:
    broker = make_broker(prefixed, "test")
    processor = RecordingProcessor()
    subscribe(broker, prefixed, processor, ("model.registered",))
    async with TestKafkaBroker(broker) as test:
        await test.publish(b"{}", "model.registered", key=b"fraud")  # no prefix: another deployment's
    assert processor.batches == []


async def test_a_batch_that_fails_is_not_acknowledged(prefixed) -> None:
    """The subscription acknowledges batches itself (AckPolicy.MANUAL): a failed batch is
    nacked (each partition sought back to its first record), so its offsets are not committed
    and the records come again; the processor decides what is poison."""
    broker = make_broker(prefixed, "test")
    processor = RecordingProcessor(fail=True)
    subscriber = subscribe(broker, prefixed, processor, ("model.registered",))
    async with TestKafkaBroker(broker) as test:
        with pytest.raises(RuntimeError, match="could not be applied"):
            await test.publish(b"{}", "t7.model.registered", key=b"fraud")
    assert len(processor.batches) == 1
    assert subscriber.ack_policy.name == "MANUAL"
