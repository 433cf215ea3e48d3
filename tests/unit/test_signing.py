"""Signed events without I/O: the outbox signs with the writing service's key, and a record on
an internal topic is believed only when the keyring says its signer may sign its type."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import signing
from shared.events import ModelIngested, ModelIngestedData, ModelPromoted, ModelPromotedData, new_event
from shared.keys import Keyring, SigningKey, canonical_event_bytes
from shared.schemagen import _EXAMPLE_KEY

SCHEMAS = Path(__file__).parents[2] / "schemas"


@pytest.fixture
def keys() -> dict[str, SigningKey]:
    made = {service: SigningKey(service, Ed25519PrivateKey.generate()) for service in ("ingest", "promotion")}
    for service, key in made.items():
        signing.register(service, key)
    yield made
    for service in made:
        signing.forget(service)


def ingested() -> bytes:
    return new_event(ModelIngested, ModelIngestedData.model_validate({
        "name": "m", "version": 1, "artifact": {"uri": "s3://b/k", "sha256": "0" * 64, "size_bytes": 1}}),
        source="modelreg/ingest").to_json()


def promoted() -> bytes:
    return new_event(ModelPromoted, ModelPromotedData(name="m", version=1, from_stage="staging",
                                                      to_stage="production", reason="policy"),
                     source="modelreg/promotion").to_json()


def test_what_a_service_signs_verifies(keys: dict[str, SigningKey]) -> None:
    keyring = Keyring(key.public() for key in keys.values())
    value = signing.sign_value("promotion", promoted())
    assert signing.forgery(keyring, "model.promoted", value) is None
    assert json.loads(value)["signingkey"] == keys["promotion"].key_id


@pytest.mark.parametrize("case, expected", [
    ("unsigned", "the event is not signed"),
    ("wrong type", "may not sign 'model.promoted'"),
    ("altered", "does not match"),
    ("unknown key", "unknown key"),
    ("not json", "not JSON"),
])
def test_forgeries_are_named(keys: dict[str, SigningKey], case: str, expected: str) -> None:
    keyring = Keyring(key.public() for key in keys.values())
    value = {
        "unsigned": promoted(),
        "wrong type": signing.sign_value("ingest", promoted()),
        "altered": signing.sign_value("promotion", promoted()).replace(b'"production"', b'"staging"'),
        "unknown key": SigningKey("promotion", Ed25519PrivateKey.generate()).sign_event_bytes(promoted()),
        "not json": b"\xff",
    }[case]
    assert expected in (signing.forgery(keyring, "model.promoted", value) or "")


def test_outside_topics_are_not_checked_internal_ones_are(keys: dict[str, SigningKey]) -> None:
    keyring = Keyring(key.public() for key in keys.values())
    assert signing.forgery(keyring, "model.registered", b'{"plain": "cloudevent"}') is None
    assert signing.forgery(keyring, "model.ingested", ingested()) == "the event is not signed"
    assert signing.forgery(keyring, "model.ingested", signing.sign_value("ingest", ingested())) is None


def test_a_service_without_a_key_cannot_write_events() -> None:
    with pytest.raises(signing.MissingSigningKey, match="MODELREG_SIGNING_KEY_FILE"):
        signing.sign_value("nobody", promoted())


@pytest.mark.parametrize("topic", sorted(signing.INTERNAL_TOPICS))
def test_the_contract_requires_and_shows_the_signature(topic: str) -> None:
    schema = json.loads((SCHEMAS / f"{topic}.schema.json").read_text())
    example = json.loads((SCHEMAS / "examples" / f"{topic}.json").read_text())
    jsonschema.validate(example, schema)
    assert Keyring([_EXAMPLE_KEY.public()]).verify(
        example["signingkey"], canonical_event_bytes(example), example["signature"])
    unsigned = {k: v for k, v in example.items() if k not in ("signature", "signingkey")}
    with pytest.raises(jsonschema.ValidationError, match="signature"):
        jsonschema.validate(unsigned, schema)
