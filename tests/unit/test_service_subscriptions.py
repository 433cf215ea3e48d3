"""Each service's Kafka wiring on FastStream's TestKafkaBroker (no broker): the subscription a
service declares at start-up (its handlers' topics, shared.broker.subscribe) hands a record
published on each of its topics to the batch processor, and its topics are the ones its ACLs
let it read and schemas/asyncapi.yaml documents (shared.schemagen builds the document from
SERVICE_READS). The handlers themselves run on real Kafka and PostgreSQL in tests/integration."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from faststream.kafka import TestKafkaBroker

from services.archival.app import create_app as archival
from services.audit.app import create_app as audit
from services.ingest.app import create_app as ingest
from services.promotion.app import create_app as promotion
from services.validation.app import create_app as validation
from services.webhooks.app import create_app as webhooks
from shared.broker import declare_publishers, make_broker, subscribe
from shared.consumer import Record
from shared.kafka_acls import SERVICE_READS
from shared.policy import load_policy
from shared.runtime import Resources, ServiceApp
from shared.settings import Settings, load_settings

SERVICES: dict[str, Callable[[Settings], ServiceApp]] = {
    "ingest": ingest, "validation": validation, "promotion": promotion, "archival": archival,
    "audit": audit, "webhooks": webhooks,
}


class RecordingProcessor:
    """Stands in for the service's BatchProcessor (which needs PostgreSQL): what it is handed."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.records: list[Record] = []

    async def process(self, records: Sequence[Record]) -> None:
        self.records.extend(records)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELREG_TOPIC_PREFIX", "t9.")
    monkeypatch.delenv("MODELREG_SIGNING_KEY_FILE", raising=False)
    return load_settings()


def handled_topics(settings: Settings, service: str) -> tuple[str, ...]:
    """The topics the service's handlers take, built as `ServiceApp.start` builds them (with
    resources that are never reached: building connects to nothing)."""
    app = SERVICES[service](settings)
    resources = Resources(settings, pool=None, store=None, policy=load_policy(None))
    return app._build(resources).topics  # the builder create_app gave it, composition included


@pytest.mark.parametrize("service", SERVICES)
async def test_a_record_on_each_of_a_services_topics_reaches_its_processor(settings: Settings, service: str) -> None:
    topics = handled_topics(settings, service)
    assert set(topics) == set(SERVICE_READS[service]), "the ACL table (and the AsyncAPI) says otherwise"
    broker = make_broker(settings, f"test-{service}")
    processor = RecordingProcessor(service)
    subscribe(broker, settings, processor, topics)
    declare_publishers(broker, settings, service)
    async with TestKafkaBroker(broker) as test:
        for index, topic in enumerate(topics):
            await test.publish(f'{{"n": {index}}}'.encode(), settings.topic(topic), key=b"fraud-detector")
    assert [(r.topic, r.key, r.value) for r in processor.records] == [
        (topic, b"fraud-detector", f'{{"n": {index}}}'.encode()) for index, topic in enumerate(topics)]
