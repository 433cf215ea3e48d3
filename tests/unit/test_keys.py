"""Signing keys and the keyring (shared/keys.py): no servers."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import keys
from shared.events import CATALOGUE


@pytest.fixture
def signing(tmp_path):
    signing_keys = keys.ensure_service_keys(tmp_path / "keys")
    keyring = keys.Keyring.load(keys.write_keyring(tmp_path / "keys"))
    return signing_keys, keyring


def _event(event_type="model.promoted", **extra):
    return {"specversion": "1.0", "id": "6a1f7b3c-0000-4000-8000-000000000001", "type": event_type,
            "source": "modelreg/promotion", "time": "2026-11-30T04:00:00Z",
            "data": {"name": "fraud", "version": 3, "to_stage": "production", "score": 0.25}, **extra}


def test_a_signature_verifies_with_the_keyring(signing):
    signing_keys, keyring = signing
    key = signing_keys["promotion"]
    payload = keys.canonical_event_bytes(_event())
    signature = key.sign(payload)
    assert "=" not in signature and "+" not in signature and "/" not in signature
    assert keyring.verify(key.key_id, payload, signature)
    assert keyring.service_of(key.key_id) == "promotion"


def test_a_changed_byte_fails(signing):
    signing_keys, keyring = signing
    key = signing_keys["promotion"]
    payload = keys.canonical_event_bytes(_event())
    signature = key.sign(payload)
    changed = payload.replace(b'"version":3', b'"version":4')
    assert changed != payload
    assert not keyring.verify(key.key_id, changed, signature)
    flipped = bytearray(keys.b64url_decode(signature))
    flipped[0] ^= 1
    assert not keyring.verify(key.key_id, payload, keys.b64url(bytes(flipped)))


def test_a_wrong_or_unknown_key_id_fails(signing):
    signing_keys, keyring = signing
    payload = keys.canonical_event_bytes(_event())
    signature = signing_keys["promotion"].sign(payload)
    assert not keyring.verify(signing_keys["ingest"].key_id, payload, signature)
    assert not keyring.verify("0000000000000000", payload, signature)
    assert not keyring.verify(signing_keys["promotion"].key_id, payload, "not base64url!")


def test_a_key_may_sign_only_its_services_event_types(signing):
    signing_keys, keyring = signing
    assert keyring.may_sign(signing_keys["promotion"].key_id, "model.promoted")
    assert not keyring.may_sign(signing_keys["ingest"].key_id, "model.promoted")
    assert not keyring.may_sign(signing_keys["api"].key_id, "model.validated")
    assert keyring.may_sign(signing_keys["audit"].key_id, "registry.audit")
    assert not keyring.may_sign("0000000000000000", "registry.audit")
    forged = signing_keys["ingest"].sign_event(_event("model.promoted"))
    assert "may not sign 'model.promoted'" in keyring.event_problem(forged)


def test_event_problem_names_unsigned_tampered_and_unknown(signing):
    signing_keys, keyring = signing
    signed = signing_keys["promotion"].sign_event(_event())
    assert keyring.event_problem(signed) is None
    assert keyring.event_problem(_event()) == "the event is not signed"
    tampered = {**signed, "data": {**signed["data"], "version": 4}}
    assert "does not match" in keyring.event_problem(tampered)
    stranger = keys.SigningKey.generate("promotion").sign_event(_event())
    assert "unknown key" in keyring.event_problem(stranger)


def test_canonical_form_ignores_key_order_spacing_and_signature_attributes():
    event = _event()
    reordered = json.loads(json.dumps(dict(reversed(list(event.items()))), indent=3))
    reordered["data"] = dict(reversed(list(reordered["data"].items())))
    assert keys.canonical_event_bytes(event) == keys.canonical_event_bytes(reordered)
    assert keys.canonical_event_bytes(event) == keys.canonical_event_bytes(
        {**event, "signature": "x", "signingkey": "y"})
    assert keys.canonical_event_bytes(event) != keys.canonical_event_bytes({**event, "source": "other"})


def test_key_files_are_private_and_kept_across_calls(tmp_path):
    directory = tmp_path / "keys"
    first = keys.ensure_service_keys(directory, ["ingest", "promotion"])
    for service in ("ingest", "promotion"):
        mode = stat.S_IMODE((directory / f"{service}.ed25519.pem").stat().st_mode)
        assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    again = keys.ensure_service_keys(directory, ["ingest", "promotion"])
    assert {s: k.key_id for s, k in first.items()} == {s: k.key_id for s, k in again.items()}
    loaded = keys.load_signing_key(directory / "ingest.ed25519.pem")
    assert (loaded.service, loaded.key_id) == ("ingest", first["ingest"].key_id)
    assert "PRIVATE" not in repr(loaded)


def test_key_files_are_pkcs8_pem_as_openssl_writes_and_reads_them(tmp_path):
    """The files `modelreg` writes (without `cryptography`) are the PKCS#8 PEM OpenSSL reads,
    and a key OpenSSL wrote loads as the same key (Ed25519 signatures are deterministic)."""
    written = keys.ensure_service_keys(tmp_path, ["ingest"])["ingest"]
    pem = (tmp_path / "ingest.ed25519.pem").read_bytes()
    opened = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(opened, Ed25519PrivateKey)
    assert opened.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw) == written.public_key
    assert opened.sign(b"payload") == written.signer.sign(b"payload").signature

    openssl_key = Ed25519PrivateKey.generate()
    (tmp_path / "promotion.ed25519.pem").write_bytes(openssl_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    loaded = keys.load_signing_key(tmp_path / "promotion.ed25519.pem")
    assert loaded.signer.sign(b"payload").signature == openssl_key.sign(b"payload")


def test_a_key_file_in_another_form_is_read_or_refused_by_name(tmp_path):
    """Not the form `modelreg` writes: `cryptography` reads it, or the error names the file."""
    openssl_key = Ed25519PrivateKey.generate()
    encrypted = tmp_path / "ingest.ed25519.pem"
    encrypted.write_bytes(openssl_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(keys.KeyFileError, match="ingest.ed25519.pem is not a PEM private key"):
        keys.load_signing_key(encrypted)
    elliptic = tmp_path / "audit.ed25519.pem"
    elliptic.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(keys.KeyFileError, match="not an Ed25519 key"):
        keys.load_signing_key(elliptic)
    garbage = tmp_path / "archival.ed25519.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(keys.KeyFileError, match="archival.ed25519.pem is not a PEM private key"):
        keys.load_signing_key(garbage)


def test_a_jwk_whose_key_is_not_32_bytes_is_refused(signing):
    _, keyring = signing
    jwk = keyring.to_jwks()["keys"][0]
    with pytest.raises(keys.KeyFileError, match="32 bytes, not 31"):
        keys.PublicKey.from_jwk({**jwk, "x": keys.b64url(keys.b64url_decode(jwk["x"])[:31]), "kid": None})


def test_key_id_is_the_sha256_prefix_of_the_raw_public_key(signing):
    import hashlib

    signing_keys, keyring = signing
    for jwk in keyring.to_jwks()["keys"]:
        raw = keys.b64url_decode(jwk["x"])
        assert jwk["kid"] == hashlib.sha256(raw).hexdigest()[:16]
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert jwk["modelreg_event_types"] == sorted(keys.event_types_for(jwk["modelreg_service"]))
    assert {j["modelreg_service"] for j in keyring.to_jwks()["keys"]} == set(keys.SERVICES)


def test_jwks_roundtrips_and_a_mismatched_kid_is_refused(signing):
    _, keyring = signing
    document = keyring.to_jwks()
    assert keys.Keyring.from_jwks(json.loads(json.dumps(document))).to_jwks() == document
    document["keys"][0]["kid"] = "ffffffffffffffff"
    with pytest.raises(keys.KeyFileError, match="kid does not match"):
        keys.Keyring.from_jwks(document)
    with pytest.raises(keys.KeyFileError, match="JWKS"):
        keys.Keyring.from_jwks({"not": "keys"})


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(keys.KeyFileError, match="MODELREG_KEYRING_FILE"):
        keys.load_keyring(None)
    with pytest.raises(keys.KeyFileError, match="MODELREG_SIGNING_KEY_FILE"):
        keys.load_own_key(None)
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.Keyring.load(tmp_path / "absent.json")
    bad = tmp_path / "ingest.ed25519.pem"
    bad.write_text("not a key")
    with pytest.raises(keys.KeyFileError, match="not a PEM private key"):
        keys.load_signing_key(bad)


def test_the_signer_table_matches_the_event_catalogue():
    every_type = {t for types in keys.SERVICE_EVENT_TYPES.values() for t in types}
    every_type |= set(keys.EVERY_SERVICE_EVENT_TYPES)
    assert every_type <= set(CATALOGUE)
    # Internal events each have at least one signing service; outside producers' do not.
    for topic, spec in CATALOGUE.items():
        signers = {s for s in keys.SERVICES if topic in keys.event_types_for(s)}
        for producer in (p.strip() for p in spec.produced_by.split(",")):
            if producer in keys.SERVICES:
                assert producer in signers, (topic, producer)
        if topic in ("model.registered", "metrics.evaluated", "promotion.requested"):
            assert signers == {"api"}, topic  # only the API's requests for a token's identity
    assert {s for s in keys.SERVICES if "model.promoted" in keys.event_types_for(s)} == {"promotion"}


def test_cli_generates_keys_and_exports_the_keyring(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MODELREG_KEYRING_FILE": ""}
    generated = subprocess.run([sys.executable, "-m", "services.cli.main", "keys", "generate",
                                "--dir", str(tmp_path / "k"), "ingest", "promotion"],
                               capture_output=True, text=True, env=env, timeout=60)
    assert generated.returncode == 0, generated.stderr
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "ingest.ed25519.pem", "keyring.json", "promotion.ed25519.pem"]
    exported = subprocess.run([sys.executable, "-m", "services.cli.main", "keys", "export",
                               "--keyring", str(tmp_path / "k" / "keyring.json")],
                              capture_output=True, text=True, env=env, timeout=60)
    assert exported.returncode == 0, exported.stderr
    jwks = json.loads(exported.stdout)
    assert {k["modelreg_service"] for k in jwks["keys"]} == {"ingest", "promotion"}
    assert "PRIVATE" not in exported.stdout
    refused = subprocess.run([sys.executable, "-m", "services.cli.main", "keys", "generate",
                              "--dir", str(tmp_path / "k"), "nobody"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "unknown service(s) nobody" in refused.stderr


def test_replay_beside_the_local_stack_checks_signatures_with_its_keyring(tmp_path, monkeypatch):
    """`modelreg replay` leaves out records no key may have signed, so beside the local stack it
    gets the stack's keyring, unless one is set; a service run gets its key as well."""
    from services.cli.keys import local_signing_defaults
    from shared.stack.launcher import LocalStack

    monkeypatch.setenv("MODELREG_STACK_DIR", str(tmp_path))
    monkeypatch.delenv("MODELREG_KEYRING_FILE", raising=False)
    monkeypatch.delenv("MODELREG_SIGNING_KEY_FILE", raising=False)
    assert local_signing_defaults("replay", None) == {}  # no stack here yet

    stack = LocalStack()
    keys.write_keyring(stack.keys_dir)
    assert local_signing_defaults("replay", None) == {"MODELREG_KEYRING_FILE": str(stack.keyring_file)}
    assert local_signing_defaults("run", "promotion") == {
        "MODELREG_SIGNING_KEY_FILE": str(stack.signing_key_file("promotion")),
        "MODELREG_KEYRING_FILE": str(stack.keyring_file)}
    assert local_signing_defaults("register", None) == {}

    monkeypatch.setenv("MODELREG_KEYRING_FILE", str(tmp_path / "elsewhere.json"))
    assert local_signing_defaults("replay", None) == {}  # the operator's own keyring stands
