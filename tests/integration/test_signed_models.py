"""Signed models through the running services (real Kafka, PostgreSQL, S3): under the `signed-*`
rule of tests/policy.yaml (signatures required, TEST_SIGNER trusted), a directory model signed
with the OpenSSF model_signing package is validated and promoted, and its promotion's
attestation verifies with the README's few lines against the API's published keyring (a
tampered one does not); the same model re-uploaded with one byte changed, unsigned, or signed by
a key the policy does not trust is rejected with the reason."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from services.api.app import ApiService
from shared.attestation import verify_attestation
from shared.keys import Keyring
from shared.model_signatures import load_trusted_key
from shared.settings import Settings
from tests.directory_models import mlflow_sklearn_dir
from tests.integration.test_directory_artifacts import checks_of, put_directory, registered
from tests.integration.test_forgery import readme_snippet
from tests.integration.test_pipeline import evaluated, promoted
from tests.signed_models import TEST_SIGNER, public_pem, sign_directory
from tests.support import Kafka, for_model, unique_name

SIGNER = load_trusted_key(public_pem(TEST_SIGNER))


def signed_model(root: Path, key: ec.EllipticCurvePrivateKey = TEST_SIGNER) -> Path:
    mlflow_sklearn_dir(root)
    sign_directory(root, key, root.parent)
    return root


def copy_of(root: Path, where: Path) -> Path:
    return Path(shutil.copytree(root, where))


async def test_a_signed_directory_passes_and_its_promotion_is_attested(
        settings: Settings, kafka: Kafka, pipeline, api_service: ApiService, tmp_path: Path) -> None:
    name = unique_name("signed")
    root = signed_model(tmp_path / "model")
    uri, sha256, size = await put_directory(settings, f"uploads/{name}/", root)
    await kafka.publish("model.registered", registered(name, uri, sha256, size))

    [validated] = await kafka.wait_for("model.validated", for_model(name, 1))
    signature = checks_of(validated)["signature"]
    assert signature["passed"]
    assert signature["detail"] == f"signed by trusted key {SIGNER.short}: all 5 files match the signed statement"
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.9}, suite="smoke"))
    [production] = await kafka.wait_for("model.promoted", promoted(name, 1, "production"))

    # The README's lines, as written, against the running API's JWKS.
    namespace: dict = {"REGISTRY": api_service.url}
    await asyncio.to_thread(exec, readme_snippet("<!-- verify-attestation -->"), namespace)
    attested = namespace["attested"]
    envelope = production.data["attestation"]
    said = attested(envelope, sha256)
    assert (said["name"], said["version"], said["stage"], said["reason"]) == (name, 1, "production", "policy")
    assert said["policy_revision"] == production.data["policy_revision"]
    assert said["gates_passed"] == ["suite:smoke"]
    assert said["artifact"] == {"uri": f"s3://{settings.s3_bucket}/artifacts/{name}/1/{sha256}/",
                                "sha256": sha256, "directory": True}
    assert verify_attestation(envelope, Keyring.load(settings.keyring_file))["predicate"] == said

    # Tampered: a changed statement breaks the signature; other bytes are not what was attested.
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["version"] = 2
    forged = {**envelope, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}
    with pytest.raises(InvalidSignature):
        attested(forged, sha256)
    with pytest.raises(ValueError, match="about other bytes"):
        attested(envelope, "0" * 64)
    [staged] = kafka.matching("model.promoted", promoted(name, 1, "staging"))
    assert attested(staged.data["attestation"], sha256)["stage"] == "staging"


async def test_the_same_model_changed_unsigned_or_signed_by_a_stranger_is_rejected(
        settings: Settings, kafka: Kafka, pipeline, tmp_path: Path) -> None:
    name = unique_name("signed")
    original = signed_model(tmp_path / "model")

    changed = copy_of(original, tmp_path / "changed")  # one byte, after signing, re-uploaded
    text = (changed / "requirements.txt").read_bytes()
    (changed / "requirements.txt").write_bytes(text[:-2] + bytes([text[-2] ^ 1]) + text[-1:])
    unsigned = copy_of(original, tmp_path / "unsigned")
    (unsigned / "model.sig").unlink()
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = signed_model(tmp_path / "stranger", stranger_key)

    for version, root in enumerate([changed, unsigned, stranger], start=1):
        uri, sha256, size = await put_directory(settings, f"uploads/{name}/{version}/", root)
        await kafka.publish("model.registered", registered(name, uri, sha256, size))
        await kafka.wait_for("model.ingested", for_model(name, version))  # versions in this order

    reasons = {}
    for version in (1, 2, 3):
        [rejected] = await kafka.wait_for("model.rejected", for_model(name, version))
        reasons[version] = [(r["code"], r["message"]) for r in rejected.data["reasons"]]
    [(code, message)] = reasons[1]
    assert code == "signature_mismatch"
    assert message.startswith(f"signature: the artifact differs from what key {SIGNER.short} signed: "
                              "requirements.txt: changed since signing: sha256 ")
    assert reasons[2] == [("signature_missing", "signature: the directory has no model.sig and the policy "
                                                "requires a signature by a trusted key")]
    hint = load_trusted_key(public_pem(stranger_key)).short
    assert reasons[3] == [("signature_untrusted",
                           f"signature: signed by key {hint}, which the policy does not trust")]
    assert not kafka.matching("model.validated", for_model(name))


async def test_a_single_file_under_a_signing_rule_is_missing_its_signature(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    from tests.integration.test_pipeline import register
    name = unique_name("signed")
    await register(settings, kafka, name, 1)
    [rejected] = await kafka.wait_for("model.rejected", for_model(name, 1))
    assert [r["code"] for r in rejected.data["reasons"]] == ["signature_missing"]
    assert "single-file artifact carries no signature" in rejected.data["reasons"][0]["message"]
