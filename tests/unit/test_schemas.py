"""schemas/ is generated from the models: it must not drift, and its examples must validate
with independent tools (jsonschema, the CloudEvents SDK)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from shared import schemagen
from shared.events import CATALOGUE

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
