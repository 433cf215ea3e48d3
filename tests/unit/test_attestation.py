"""The registry's signed statement of a promotion (shared/attestation.py): what it says, that
promotion's key signs it under the keyring's rules, that a change anywhere breaks it, and that
model.promoted carries it (the contract's example included)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.attestation import (
    PREDICATE_TYPE,
    AttestationError,
    pae,
    passed_gates,
    promotion_statement,
    sign_statement,
    verify_attestation,
)
from shared.events import CATALOGUE, ModelPromotedData
from shared.keys import Keyring, ensure_service_keys
from shared.schemagen import example

SHA = "ab" * 32
EVIDENCE = {"gates": [{"gate": "suite:offline-eval", "passed": True, "detail": "ok"},
                      {"gate": "threshold:auc", "passed": True, "detail": "0.95 >= 0.9"},
                      {"gate": "champion", "passed": False, "detail": "not better"}],
            "approvers": ["alice", "bob"]}
WHEN = datetime(2026, 11, 30, 8, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return ensure_service_keys(Path(tmp_path_factory.mktemp("keys")))


@pytest.fixture(scope="module")
def keyring(keys) -> Keyring:
    return Keyring(key.public() for key in keys.values())


def statement(**changes):
    fields = dict(name="fraud", version=3, from_stage="staging", to_stage="production", reason="policy",
                  artifact_uri=f"s3://bucket/artifacts/fraud/3/{SHA}/", sha256=SHA, policy_revision="sha256:1234",
                  evidence=EVIDENCE, previous_champion=2, promoted_at=WHEN)
    return promotion_statement(**{**fields, **changes})


def test_the_statement_names_the_artifact_and_the_decision() -> None:
    made = statement()
    assert made["_type"] == "https://in-toto.io/Statement/v1"
    assert made["subject"] == [{"name": "fraud@3", "uri": f"s3://bucket/artifacts/fraud/3/{SHA}/",
                                "digest": {"sha256": SHA}}]
    assert made["predicateType"] == PREDICATE_TYPE
    assert made["predicate"] == {
        "name": "fraud", "version": 3, "from_stage": "staging", "stage": "production", "reason": "policy",
        "policy_revision": "sha256:1234", "gates_passed": ["suite:offline-eval", "threshold:auc"],
        "approvers": ["alice", "bob"], "previous_champion": 2,
        "artifact": {"uri": f"s3://bucket/artifacts/fraud/3/{SHA}/", "sha256": SHA, "directory": True},
        "promoted_at": "2026-11-30T08:30:00Z"}


def test_gates_passed_reads_only_well_formed_passing_gates() -> None:
    assert passed_gates({}) == []
    assert passed_gates({"gates": "all"}) == []
    assert passed_gates({"gates": [{"gate": "a", "passed": True}, {"passed": True}, "x", {"gate": "b"}]}) == ["a"]


def test_promotions_key_signs_and_the_keyring_verifies(keys, keyring: Keyring) -> None:
    envelope = sign_statement(keys["promotion"], statement())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert envelope["signatures"][0]["keyid"] == keys["promotion"].key_id
    assert verify_attestation(envelope, keyring) == statement()


def test_the_signature_is_dsse_over_the_payload(keys) -> None:
    """Any DSSE verifier can check it: Ed25519 over PAE(payloadType, payload), checked here
    with OpenSSL (`cryptography`), not the libsodium that signed it."""
    envelope = sign_statement(keys["promotion"], statement())
    payload = base64.b64decode(envelope["payload"])
    openssl_key = Ed25519PublicKey.from_public_bytes(keys["promotion"].public_key)
    openssl_key.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae("application/vnd.in-toto+json", payload))
    assert pae("t", b"ab") == b"DSSEv1 1 t 2 ab"


def tampered(envelope: dict, **predicate) -> dict:
    document = json.loads(base64.b64decode(envelope["payload"]))
    document["predicate"].update(predicate)
    return {**envelope, "payload": base64.b64encode(json.dumps(document).encode()).decode()}


@pytest.mark.parametrize("change", [{"stage": "production", "version": 4}, {"policy_revision": "sha256:0"},
                                    {"gates_passed": []}])
def test_a_changed_statement_does_not_verify(keys, keyring: Keyring, change: dict) -> None:
    envelope = sign_statement(keys["promotion"], statement())
    with pytest.raises(AttestationError, match="does not match the statement"):
        verify_attestation(tampered(envelope, **change), keyring)


def test_a_changed_subject_digest_does_not_verify(keys, keyring: Keyring) -> None:
    envelope = sign_statement(keys["promotion"], statement())
    document = json.loads(base64.b64decode(envelope["payload"]))
    document["subject"][0]["digest"]["sha256"] = "cd" * 32
    forged = {**envelope, "payload": base64.b64encode(json.dumps(document).encode()).decode()}
    with pytest.raises(AttestationError, match="does not match"):
        verify_attestation(forged, keyring)


def test_only_a_key_that_may_sign_model_promoted_attests(keys, keyring: Keyring) -> None:
    with pytest.raises(AttestationError, match="key .* of service ingest may not attest promotions"):
        verify_attestation(sign_statement(keys["ingest"], statement()), keyring)


def test_a_key_outside_the_keyring_is_unknown(keys) -> None:
    only_ingest = Keyring([keys["ingest"].public()])
    with pytest.raises(AttestationError, match="unknown key"):
        verify_attestation(sign_statement(keys["promotion"], statement()), only_ingest)


@pytest.mark.parametrize("envelope, message", [
    ({"payloadType": "text/plain", "payload": "", "signatures": []}, "not a DSSE envelope"),
    ({"payloadType": "application/vnd.in-toto+json", "payload": "%%", "signatures": []}, "payload is not base64"),
    ({"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": []}, "no signature"),
    ("not a mapping", "not a DSSE envelope"),
])
def test_malformed_envelopes_are_refused(keyring: Keyring, envelope, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        verify_attestation(envelope, keyring)


def test_a_signed_statement_of_another_kind_is_refused(keys, keyring: Keyring) -> None:
    other = {**statement(), "predicateType": "https://slsa.dev/provenance/v1"}
    with pytest.raises(AttestationError, match="is not a https://modelreg.dev/attestations/promotion/v1"):
        verify_attestation(sign_statement(keys["promotion"], other), keyring)


def test_model_promoted_carries_it_and_stays_valid_without_it(keys) -> None:
    base = {"name": "fraud", "version": 3, "from_stage": "staging", "to_stage": "production", "reason": "policy"}
    assert ModelPromotedData.model_validate(base).attestation is None  # events from before it
    data = ModelPromotedData.model_validate({**base, "attestation": sign_statement(keys["promotion"], statement())})
    assert data.attestation is not None and data.attestation.signatures[0].keyid == keys["promotion"].key_id


def test_the_contracts_example_carries_a_verifiable_attestation() -> None:
    event = example(CATALOGUE["model.promoted"])
    envelope = event["data"]["attestation"]
    payload = json.loads(base64.b64decode(envelope["payload"]))
    assert payload["predicate"]["name"] == event["data"]["name"]
    assert payload["predicate"]["stage"] == event["data"]["to_stage"]
    from shared.schemagen import _EXAMPLE_KEY
    example_ring = Keyring([_EXAMPLE_KEY.public()])
    with pytest.raises(AttestationError, match="may not attest"):  # the example key signs nothing real
        verify_attestation(envelope, example_ring)
