"""Model signatures made by the real `model_signing` package (key-based), verified by
shared/model_signatures.py against trusted keys and the version's manifest, and validation's
decision of when a signature is needed (services/validation/signature.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import model_signing
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.validation.logic import rejection_reasons
from services.validation.signature import judge_signature, signature_check, signature_to_read
from shared.events import Check
from shared.manifest import FileEntry
from shared.model_signatures import (
    BUNDLE_MEDIA_TYPE,
    INVALID,
    MAX_SIGNATURE_BYTES,
    MISMATCH,
    MISSING,
    UNTRUSTED,
    load_trusted_key,
    pae,
    verify_model_signature,
)
from shared.policy import SigningRule
from tests.signed_models import TEST_SIGNER, manifest_of, public_pem, sign_directory, write_private

TRUSTED = load_trusted_key(public_pem(TEST_SIGNER))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "weights").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / "weights" / "part-0.bin").write_bytes(bytes(range(256)) * 4)
    return root


def signed(model: Path, key: ec.EllipticCurvePrivateKey = TEST_SIGNER, **options) -> bytes:
    return sign_directory(model, key, model.parent, **options).read_bytes()


def verdict(model: Path, bundle: bytes, trusted=(TRUSTED,)):
    return verify_model_signature(bundle, list(trusted), manifest_of(model))


# ---------------------------------------------------------------------------- what passes


def test_a_directory_signed_by_a_trusted_key_verifies(model: Path) -> None:
    result = verdict(model, signed(model))
    assert result.verified and result.code is None
    assert result.key == TRUSTED.fingerprint
    assert result.message == f"signed by trusted key {TRUSTED.short}: all 3 files match the signed statement"


def test_model_signings_own_verifier_agrees_on_the_signed_directory(model: Path) -> None:
    """The package's verifier accepts what we accept (same bundle, same key)."""
    signed(model)
    public = model.parent / "trusted.pub.pem"
    public.write_bytes(public_pem(TEST_SIGNER))
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[model / "model.sig"])
    (model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public)
     .set_hashing_config(hashing).verify(model, model / "model.sig"))


def test_the_fingerprint_is_the_hint_model_signing_writes(model: Path) -> None:
    bundle = json.loads(signed(model))
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == TRUSTED.fingerprint


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_p384_and_p521_keys_verify(model: Path, curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    assert verdict(model, signed(model, key), [TRUSTED, load_trusted_key(public_pem(key))]).verified


def test_one_of_several_trusted_keys_is_enough(model: Path) -> None:
    other = load_trusted_key(public_pem(ec.generate_private_key(ec.SECP256R1())))
    assert verdict(model, signed(model), [other, TRUSTED]).key == TRUSTED.fingerprint


def test_a_bundle_without_a_key_hint_is_tried_with_every_trusted_key(model: Path) -> None:
    bundle = json.loads(signed(model))
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    other = load_trusted_key(public_pem(ec.generate_private_key(ec.SECP256R1())))
    assert verdict(model, json.dumps(bundle).encode(), [other, TRUSTED]).verified
    refused = verdict(model, json.dumps(bundle).encode(), [other])
    assert (refused.code, refused.message) == (UNTRUSTED, "no key the policy trusts made this signature")


# ---------------------------------------------------------------------------- the files must be the signed ones


def test_one_changed_byte_is_a_mismatch_naming_the_file(model: Path) -> None:
    bundle = signed(model)
    data = bytearray((model / "weights" / "part-0.bin").read_bytes())
    data[100] ^= 1
    (model / "weights" / "part-0.bin").write_bytes(bytes(data))
    result = verdict(model, bundle)
    assert result.code == MISMATCH
    assert result.message.startswith(f"the artifact differs from what key {TRUSTED.short} signed: "
                                     "weights/part-0.bin: changed since signing: sha256 ")
    assert hashlib.sha256(bytes(data)).hexdigest() in result.message


def test_an_added_file_is_a_mismatch_naming_it(model: Path) -> None:
    bundle = signed(model)
    (model / "weights" / "extra.pkl").write_bytes(b"added later")
    result = verdict(model, bundle)
    assert result.code == MISMATCH
    assert result.message.endswith("weights/extra.pkl: not signed (added after signing)")


def test_a_missing_file_is_a_mismatch_naming_it(model: Path) -> None:
    bundle = signed(model)
    (model / "MLmodel").unlink()
    result = verdict(model, bundle)
    assert result.code == MISMATCH
    assert result.message.endswith("MLmodel: signed but missing from the artifact")


def test_every_difference_is_named_in_path_order(model: Path) -> None:
    bundle = signed(model)
    (model / "MLmodel").unlink()
    (model / "model.safetensors").write_bytes(b"other")
    (model / "zz").write_bytes(b"new")
    message = verdict(model, bundle).message
    assert [part.split(":")[0] for part in message.split(": ", 1)[1].split("; ")] == [
        "MLmodel", "model.safetensors", "zz"]


def test_git_files_model_signing_leaves_out_by_default_are_not_signed(model: Path) -> None:
    (model / ".gitattributes").write_text("*.bin filter=lfs\n")
    result = verdict(model, signed(model))
    assert result.code == MISMATCH and ".gitattributes: not signed" in result.message
    assert verdict(model, signed(model, ignore_git_paths=False)).verified


def test_model_sig_itself_is_not_compared(model: Path) -> None:
    bundle = signed(model)
    assert any(e.path == "model.sig" for e in manifest_of(model))
    assert verdict(model, bundle).verified


# ---------------------------------------------------------------------------- who signed it


def test_a_key_the_policy_does_not_trust_is_untrusted(model: Path) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    result = verdict(model, signed(model, stranger))
    hint = load_trusted_key(public_pem(stranger)).short
    assert (result.code, result.message) == (UNTRUSTED, f"signed by key {hint}, which the policy does not trust")


def test_no_trusted_key_at_all_is_untrusted(model: Path) -> None:
    assert verdict(model, signed(model), []).code == UNTRUSTED


def test_a_stranger_claiming_a_trusted_keys_hint_is_invalid(model: Path) -> None:
    bundle = json.loads(signed(model, ec.generate_private_key(ec.SECP256R1())))
    bundle["verificationMaterial"]["publicKey"]["hint"] = TRUSTED.fingerprint
    result = verdict(model, json.dumps(bundle).encode())
    assert result.code == INVALID and "does not verify with key" in result.message


def test_an_altered_statement_is_invalid(model: Path) -> None:
    """Re-signing is what it would take: editing the signed statement breaks the signature."""
    bundle = json.loads(signed(model))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    assert verdict(model, json.dumps(bundle).encode()).code == INVALID


def test_an_altered_signature_is_invalid(model: Path) -> None:
    bundle = json.loads(signed(model))
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    assert verdict(model, json.dumps(bundle).encode()).code == INVALID


def test_a_keyless_sigstore_bundle_is_untrusted(model: Path) -> None:
    bundle = json.loads(signed(model))
    bundle["verificationMaterial"] = {"certificate": {"rawBytes": "MIIB"}, "tlogEntries": []}
    result = verdict(model, json.dumps(bundle).encode())
    assert result.code == UNTRUSTED and "keyless" in result.message


# ---------------------------------------------------------------------------- malformed signatures


def mutated(model: Path, change) -> bytes:
    bundle = json.loads(signed(model))
    change(bundle)
    return json.dumps(bundle).encode()


@pytest.mark.parametrize("bundle, expected", [
    (b"not json", "model.sig is not a JSON Sigstore bundle"),
    (b"[1, 2]", "model.sig is not a JSON Sigstore bundle"),
    (b"\xff\xfe", "model.sig is not a JSON Sigstore bundle"),
    (json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1"}).encode(),
     "is not a Sigstore bundle of media type"),
    (json.dumps({"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": {}}).encode(), "holds no DSSE envelope"),
    (b" " * (MAX_SIGNATURE_BYTES + 1), "larger than"),
])
def test_what_is_not_a_bundle_is_invalid(model: Path, bundle: bytes, expected: str) -> None:
    result = verdict(model, bundle)
    assert result.code == INVALID and expected in result.message


@pytest.mark.parametrize("change, expected", [
    (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "is not application/vnd.in-toto+json"),
    (lambda b: b["dsseEnvelope"].update(payload="***"), "payload is not base64"),
    (lambda b: b["dsseEnvelope"].update(signatures=[]), "carries no signature"),
    (lambda b: b["dsseEnvelope"]["signatures"][0].update(sig=None), "a signature is missing"),
])
def test_a_broken_envelope_is_invalid(model: Path, change, expected: str) -> None:
    result = verdict(model, mutated(model, change))
    assert result.code == INVALID and expected in result.message


@pytest.mark.parametrize("options, expected", [
    ({"shards": True}, "signed as 'shards'"),
    ({"hash_type": "blake2"}, "with 'blake2b'"),
])
def test_other_serializations_than_whole_files_by_sha256_are_invalid(model: Path, options, expected: str) -> None:
    result = verdict(model, signed(model, **options))
    assert result.code == INVALID and expected in result.message


def envelope_of(statement: object, key: ec.EllipticCurvePrivateKey = TEST_SIGNER) -> bytes:
    """A bundle around `statement`, genuinely signed: what only a trusted signer could make."""
    payload = json.dumps(statement).encode()
    signature = key.sign(pae("application/vnd.in-toto+json", payload), ec.ECDSA(hashes.SHA256()))
    return json.dumps({"mediaType": BUNDLE_MEDIA_TYPE,
                       "verificationMaterial": {"publicKey": {"hint": TRUSTED.fingerprint}, "tlogEntries": []},
                       "dsseEnvelope": {"payload": base64.b64encode(payload).decode(),
                                        "payloadType": "application/vnd.in-toto+json",
                                        "signatures": [{"sig": base64.b64encode(signature).decode(),
                                                        "keyid": ""}]}}).encode()


def statement_of(resources: list[dict], *, root: str | None = None, **changes) -> dict:
    digest = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources
                                     if set(r["digest"]) <= set("0123456789abcdef"))).hexdigest()
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": "model", "digest": {"sha256": root or digest}}],
                 "predicateType": "https://model_signing/signature/v1.0",
                 "predicate": {"resources": resources,
                               "serialization": {"method": "files", "hash_type": "sha256",
                                                 "allow_symlinks": False, "ignore_paths": []}}}
    statement.update(changes)
    return statement


ONE = [{"name": "a.bin", "algorithm": "sha256", "digest": hashlib.sha256(b"a").hexdigest()}]
A_MANIFEST = [FileEntry("a.bin", 1, hashlib.sha256(b"a").hexdigest())]


def test_a_statement_signed_by_hand_in_model_signings_format_verifies() -> None:
    assert verify_model_signature(envelope_of(statement_of(ONE)), [TRUSTED], A_MANIFEST).verified


@pytest.mark.parametrize("statement, expected", [
    (statement_of(ONE, _type="https://in-toto.io/Statement/v0.1"), "is not an in-toto"),
    (statement_of(ONE, predicateType="https://model_signing/Digests/v0.1"), "pre-1.0 model_signing statement"),
    (statement_of(ONE, predicateType="https://slsa.dev/provenance/v1"), "is not https://model_signing/signature/v1.0"),
    (statement_of(ONE, root="0" * 64), "subject digest is not the digest of its resources"),
    (statement_of(ONE, subject=[]), "needs one subject"),
    (statement_of(ONE, predicate={"resources": ONE}), "has no serialization"),
    (statement_of([{**ONE[0], "name": "../etc/passwd"}]), "bad resource '../etc/passwd'"),
    (statement_of([{**ONE[0], "algorithm": "md5"}]), "bad resource 'a.bin'"),
    (statement_of([{**ONE[0], "digest": "zz" * 32}]), "with a bad digest or twice"),
    (statement_of([ONE[0], ONE[0]]), "with a bad digest or twice"),
    ("just a string", "is not an in-toto"),
])
def test_a_signed_statement_that_is_not_model_signings_v1_is_invalid(statement, expected: str) -> None:
    result = verify_model_signature(envelope_of(statement), [TRUSTED], A_MANIFEST)
    assert result.code == INVALID and expected in result.message


# ---------------------------------------------------------------------------- trusted keys


def test_trusted_keys_are_elliptic_curve_public_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a private key was given"):
        load_trusted_key(write_private(TEST_SIGNER, tmp_path / "signer.pem").read_bytes())
    spki = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(*spki)
    with pytest.raises(ValueError, match="RSAPublicKey key; model signing keys are elliptic-curve"):
        load_trusted_key(rsa_pem)
    with pytest.raises(ValueError, match="Ed25519PublicKey key"):
        load_trusted_key(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*spki))
    with pytest.raises(ValueError, match="curve secp256k1 is not supported"):
        load_trusted_key(ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(*spki))
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_trusted_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert load_trusted_key(public_pem(TEST_SIGNER).decode()) == TRUSTED


# ---------------------------------------------------------------------------- validation's decision


REQUIRED = SigningRule(required=True, trusted_keys=(TRUSTED,))
OPTIONAL = SigningRule(required=False, trusted_keys=(TRUSTED,))


def test_no_signing_rule_looks_at_nothing(model: Path) -> None:
    bundle = signed(model)
    assert judge_signature(SigningRule(), manifest_of(model), bundle) is None
    assert signature_to_read(SigningRule(), manifest_of(model)) is None


def test_required_signature_on_a_single_file_is_missing() -> None:
    result = judge_signature(REQUIRED, None, None)
    assert result is not None and result.code == MISSING and "single-file artifact" in result.message
    assert judge_signature(OPTIONAL, None, None) is None


def test_an_unsigned_directory_is_missing_only_where_signatures_are_required(model: Path) -> None:
    result = judge_signature(REQUIRED, manifest_of(model), None)
    assert result is not None and result.code == MISSING
    assert result.message == "the directory has no model.sig and the policy requires a signature by a trusted key"
    assert judge_signature(OPTIONAL, manifest_of(model), None) is None


def test_a_signature_present_is_verified_even_where_not_required(model: Path) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    bundle = signed(model, stranger)
    manifest = manifest_of(model)
    assert signature_to_read(OPTIONAL, manifest) == next(e for e in manifest if e.path == "model.sig")
    result = judge_signature(OPTIONAL, manifest, bundle)
    assert result is not None and result.code == UNTRUSTED


def test_the_signature_read_must_be_the_one_the_manifest_lists(model: Path) -> None:
    bundle = signed(model)
    manifest = manifest_of(model)
    assert judge_signature(REQUIRED, manifest, bundle).verified  # type: ignore[union-attr]
    other = judge_signature(REQUIRED, manifest, bundle + b" ")
    assert other is not None
    assert (other.code, other.message) == (INVALID, "model.sig is not the file the manifest lists")
    unread = judge_signature(REQUIRED, manifest, None)
    assert unread is not None and unread.code == INVALID


def test_an_oversized_model_sig_is_not_read(model: Path) -> None:
    manifest = [*manifest_of(model), FileEntry("model.sig", MAX_SIGNATURE_BYTES + 1, "0" * 64)]
    assert signature_to_read(REQUIRED, manifest) is None


def test_the_check_and_the_rejection_code_say_how_it_failed(model: Path) -> None:
    result = judge_signature(REQUIRED, manifest_of(model), None)
    assert result is not None
    check = signature_check(result)
    assert (check.name, check.passed) == ("signature", False)
    reasons = rejection_reasons([Check(name="checksum", passed=True), check], {"signature": result.code or ""})
    assert [(r.code, r.message) for r in reasons] == [(MISSING, f"signature: {result.message}")]
    bundle = signed(model)
    passing = signature_check(judge_signature(REQUIRED, manifest_of(model), bundle))  # type: ignore[arg-type]
    assert passing.passed and passing.detail.startswith("signed by trusted key")


def test_the_readmes_signing_command_makes_a_signature_the_registry_accepts(model: Path) -> None:
    """The command the README gives publishers, run as written with model_signing's CLI."""
    import shlex
    import subprocess
    import sys
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [command] = [line for line in readme.splitlines() if line.startswith("model_signing sign key ")]
    write_private(TEST_SIGNER, model.parent / "signer.pem")
    cli = Path(sys.executable).with_name("model_signing")
    subprocess.run([str(cli), *shlex.split(command)[1:]], cwd=model.parent, check=True, capture_output=True)
    assert verdict(model, (model / "model.sig").read_bytes()).verified
