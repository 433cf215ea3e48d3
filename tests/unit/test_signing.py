"""Signed events without I/O: the outbox signs with the writing service's key, and a record on
an internal topic is believed only when the keyring says its signer may sign its type."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import jsonschema
import pytest
import rfc8785

from shared import signing
from shared.events import ModelIngested, ModelIngestedData, ModelPromoted, ModelPromotedData, new_event
from shared.keys import Keyring, SigningKey, canonical_event_bytes
from shared.schemagen import _EXAMPLE_KEY

SCHEMAS = Path(__file__).parents[2] / "schemas"


@pytest.fixture
def keys() -> dict[str, SigningKey]:
    made = {service: SigningKey.generate(service) for service in ("ingest", "promotion")}
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
    assert signing.check(keyring, "model.promoted", value)[0] is None
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
        "unknown key": SigningKey.generate("promotion").sign_event_bytes(promoted()),
        "not json": b"\xff",
    }[case]
    assert expected in (signing.check(keyring, "model.promoted", value)[0] or "")


def test_outside_topics_are_not_checked_internal_ones_are(keys: dict[str, SigningKey]) -> None:
    keyring = Keyring(key.public() for key in keys.values())
    assert signing.check(keyring, "model.registered", b'{"plain": "cloudevent"}')[0] is None
    assert signing.check(keyring, "model.ingested", ingested())[0] == "the event is not signed"
    assert signing.check(keyring, "model.ingested", signing.sign_value("ingest", ingested()))[0] is None


def test_senders_are_verified_keys_or_the_topics_acl_role(keys: dict[str, SigningKey]) -> None:
    api = SigningKey.generate("api")
    keyring = Keyring([*(key.public() for key in keys.values()), api.public()])
    registered = b'{"type": "model.registered", "source": "pipelines/claims-to-be-anyone"}'
    assert signing.check(keyring, "model.registered", registered) == (None, "acl:pipeline")
    assert signing.check(keyring, "metrics.evaluated", b"{}") == (None, "acl:qa")
    assert signing.check(keyring, "model.registered", api.sign_event_bytes(registered)) == (None, "key:api")
    assert signing.check(keyring, "model.promoted", signing.sign_value("promotion", promoted())) == (
        None, "key:promotion")
    # A signature on an outside event must hold, and its key must be allowed the type.
    assert "does not match" in signing.check(keyring, "model.registered", api.sign_event_bytes(
        registered).replace(b"claims-to-be-anyone", b"someone-else"))[0]
    assert "may not sign" in signing.check(keyring, "model.registered", keys["ingest"].sign_event_bytes(registered))[0]


def test_a_producer_key_an_operator_trusts_names_the_producer() -> None:
    from shared.keys import PublicKey

    producer = SigningKey.generate("fraud-train")
    trusted = PublicKey("fraud-train", producer.public_key, frozenset({"model.registered"}))
    keyring = Keyring.from_jwks({"keys": [trusted.to_jwk()]})  # as added to keyring.json
    registered = b'{"type": "model.registered", "source": "pipelines/fraud-train"}'
    assert signing.check(keyring, "model.registered", producer.sign_event_bytes(registered)) == (
        None, "key:fraud-train")
    evaluated = b'{"type": "metrics.evaluated"}'  # not a type it was trusted with
    assert "may not sign" in signing.check(keyring, "metrics.evaluated", producer.sign_event_bytes(evaluated))[0]


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


def _random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        alphabet = string.printable + "é\u2028\u00ff\x00\x1f\"\\/😀中"
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        number = rng.choice([rng.random(), rng.uniform(-1e6, 1e6), 1.0, 0.0, -0.0, 1e-5, 1e-7, 1e16, 1e21, 1e300,
                             0.1 + 0.2, 5e-324, float(2**53), float(2**60), 1e-4, 9.999e15])
        return rng.choice([text, rng.randint(-2**53 + 1, 2**53 - 1), number, True, False, None])
    if roll < 0.7:
        keys = [rng.choice(["a", "b", "name", "Z", "_x", "é", "\U0001f600", "\ue000"]) + str(rng.randint(0, 9))
                for _ in range(rng.randint(0, 5))]
        return {key: _random_value(rng, depth + 1) for key in keys}
    return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def test_the_fast_canonical_form_is_rfc_8785() -> None:
    """The encoder the signatures use writes exactly what the `rfc8785` package writes."""
    rng = random.Random(8785)
    compared = 0
    for _ in range(5000):
        document = {"data": _random_value(rng)}
        try:
            expected = rfc8785.dumps(document)
        except rfc8785.CanonicalizationError:
            continue
        assert canonical_event_bytes(document) == expected, document
        compared += 1
    assert compared > 4000


def test_signing_appends_the_signature_to_the_message_as_it_is(keys: dict[str, SigningKey]) -> None:
    """The outbox's signed row is the emitted message plus the two attributes: nothing else in
    it is encoded again, and it verifies whatever spacing the message had."""
    keyring = Keyring(key.public() for key in keys.values())
    message = promoted()
    signed = keys["promotion"].sign_event_bytes(message)
    assert signed.startswith(message[:-1]) and signed.endswith(b'"}')
    document = json.loads(signed)
    assert {k: v for k, v in document.items() if k not in ("signature", "signingkey")} == json.loads(message)
    assert signing.check(keyring, "model.promoted", signed) == (None, "key:promotion")
    spaced = json.dumps(json.loads(message), indent=2).encode() + b"\n"
    signed_spaced = keys["promotion"].sign_event_bytes(spaced)
    assert signing.check(keyring, "model.promoted", signed_spaced) == (None, "key:promotion")


def test_signing_a_signed_message_again_replaces_its_signature(keys: dict[str, SigningKey]) -> None:
    keyring = Keyring(key.public() for key in keys.values())
    by_ingest = keys["ingest"].sign_event_bytes(promoted())
    again = keys["promotion"].sign_event_bytes(by_ingest)
    document = json.loads(again)
    assert document["signingkey"] == keys["promotion"].key_id and again.count(b'"signature"') == 1
    assert signing.check(keyring, "model.promoted", again) == (None, "key:promotion")


def test_an_empty_object_is_signed_as_a_whole_document(keys: dict[str, SigningKey]) -> None:
    assert set(json.loads(keys["ingest"].sign_event_bytes(b"{}"))) == {"signature", "signingkey"}


@pytest.mark.parametrize("message", [b"[]", b'"text"', b"1"])
def test_what_is_not_a_json_object_is_not_signed(keys: dict[str, SigningKey], message: bytes) -> None:
    with pytest.raises(ValueError, match="a CloudEvent message is a JSON object"):
        keys["ingest"].sign_event_bytes(message)
