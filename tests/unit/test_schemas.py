"""schemas/ is generated from the models: it must not drift, and its examples must validate
with independent tools (jsonschema, the CloudEvents SDK)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared import schemagen
from shared.events import CATALOGUE
from shared.kafka_acls import SERVICE_PRINCIPALS, SERVICE_READS, service_writes
from shared.keys import SIGNATURE_ATTRIBUTES
from shared.signing import INTERNAL_TOPICS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schemas_match_the_models() -> None:
    assert schemagen.drift(SCHEMAS) == [], "run `modelreg schemas generate`"


def test_drift_is_detected(tmp_path: Path) -> None:
    schemagen.write(tmp_path)
    assert schemagen.drift(tmp_path) == []
    target = tmp_path / "model.registered.schema.json"
    target.write_text(target.read_text().replace('"maxLength": 128', '"maxLength": 129'))
    (tmp_path / "examples" / "model.ingested.json").unlink()
    assert sorted(schemagen.drift(tmp_path)) == sorted([
        f"out of date: {target}", f"missing: {tmp_path / 'examples' / 'model.ingested.json'}"])


@pytest.mark.parametrize("topic", list(CATALOGUE))
def test_example_validates_against_its_schema(topic: str) -> None:
    schema = json.loads((SCHEMAS / f"{topic}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    event = json.loads((SCHEMAS / "examples" / f"{topic}.json").read_text())
    validator.validate(event)
    broken = json.loads(json.dumps(event))
    broken["data"]["unexpected"] = 1
    assert not validator.is_valid(broken), "data must reject unknown fields"


@pytest.mark.parametrize("topic", list(CATALOGUE))
def test_example_parses_with_the_cloudevents_sdk(topic: str) -> None:
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    raw = (SCHEMAS / "examples" / f"{topic}.json").read_bytes()
    event = JSONFormat().read(CloudEvent, raw)
    assert event.get_type() == topic
    assert event.get_specversion() == "1.0"
    assert event.get_extension("correlationid")


def test_asyncapi_documents_every_topic() -> None:
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == set(CATALOGUE)
    for message in document["components"]["messages"].values():
        assert (SCHEMAS / message["payload"]["$ref"].removeprefix("./")).exists()


# ---------------------------------------------------------------------- FastStream's AsyncAPI

COMMITTED_ASYNCAPI = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())


def _service_operations_committed() -> set[tuple[str, str, str]]:
    channels = COMMITTED_ASYNCAPI["channels"]
    return {(op["x-service"], op["action"], channels[op["channel"]["$ref"].removeprefix("#/channels/")]["address"])
            for op in COMMITTED_ASYNCAPI["operations"].values() if "x-service" in op}


def test_what_each_faststream_app_sends_and_receives_is_in_the_committed_asyncapi() -> None:
    """One source: the committed document's service operations are the FastStream apps'."""
    generated = set(schemagen.service_operations(schemagen.service_specifications()))
    assert generated == _service_operations_committed()
    assert ("ingest", "receive", "model.registered") in generated
    assert ("promotion", "send", "model.promoted") in generated


@pytest.mark.parametrize("service", SERVICE_PRINCIPALS)
def test_a_service_declares_a_publisher_per_topic_it_may_write_and_subscribes_to_what_it_reads(
        service: str) -> None:
    operations = schemagen.service_operations({service: schemagen.service_specifications()[service]})
    assert {t for _, action, t in operations if action == "send"} == set(service_writes(service))
    assert {t for _, action, t in operations if action == "receive"} == set(SERVICE_READS[service])


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    payload = schema
    while "$ref" in payload:
        payload = document["components"]["schemas"][payload["$ref"].removeprefix("#/components/schemas/")]
    return payload


def test_faststream_payloads_have_the_published_schemas_fields() -> None:
    """FastStream documents a publisher's payload from the event model; it names the fields
    and required fields that schemas/<topic>.schema.json publishes (the published schema adds
    the signature attributes of the registry's own events)."""
    checked = set()
    for document in schemagen.service_specifications().values():
        for operation in document["operations"].values():
            if operation["action"] != "send":
                continue
            channel = document["channels"][operation["channel"]["$ref"].removeprefix("#/channels/")]
            (message,) = channel["messages"].values()
            message = document["components"]["messages"][message["$ref"].removeprefix("#/components/messages/")]
            payload = _resolved(document, message["payload"])
            published = json.loads((SCHEMAS / f"{channel['address']}.schema.json").read_text())
            extra = set(SIGNATURE_ATTRIBUTES) if channel["address"] in INTERNAL_TOPICS else set()
            assert set(payload["properties"]) == set(published["properties"]) - extra, channel["address"]
            assert set(payload["required"]) == set(published["required"]) - extra, channel["address"]
            data = _resolved(document, payload["properties"]["data"])
            published_data = published["$defs"][published["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
            assert set(data["properties"]) == set(published_data["properties"]), channel["address"]
            checked.add(channel["address"])
    assert checked == set(CATALOGUE)
