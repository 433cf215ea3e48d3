"""The policy's `signing` key: trusted keys inline or from files, clear errors, the revision."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.model_signatures import load_trusted_key
from shared.policy import DEFAULT_RULE, PolicyError, load_policy, parse_policy
from tests.signed_models import TEST_SIGNER, public_pem, write_private

PEM = public_pem(TEST_SIGNER).decode()
FINGERPRINT = load_trusted_key(PEM).fingerprint
ROOT = Path(__file__).resolve().parents[2]


def policy_with(signing: str) -> str:
    return f'rules:\n  - match: "signed-*"\n    signing:\n{textwrap.indent(signing, "      ")}'


def inline(pem: str = PEM) -> str:
    return "required: true\ntrusted_keys:\n  - |\n" + textwrap.indent(pem, "    ")


def problem(text: str, base_dir: Path | None = None) -> str:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, "policy.yaml", base_dir)
    return str(raised.value)


def test_an_inline_pem_key_is_trusted() -> None:
    rule = parse_policy(policy_with(inline()), "policy.yaml").rule_for("signed-x")
    assert rule.signing.required and rule.signing.applies
    assert [k.fingerprint for k in rule.signing.trusted_keys] == [FINGERPRINT]
    assert rule.to_dict()["signing"] == {"required": True, "trusted_keys": [f"sha256:{FINGERPRINT}"]}


def test_a_key_file_is_read_relative_to_the_policy_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "release.pub.pem").write_text(PEM)
    (tmp_path / "policy.yaml").write_text(policy_with("required: true\ntrusted_keys: [keys/release.pub.pem]\n"))
    from_file = load_policy(tmp_path / "policy.yaml")
    assert [k.fingerprint for k in from_file.rule_for("signed-x").signing.trusted_keys] == [FINGERPRINT]
    absolute = parse_policy(policy_with(f"required: true\ntrusted_keys: [{tmp_path / 'keys/release.pub.pem'}]\n"))
    assert absolute.rule_for("signed-x").signing.trusted_keys == from_file.rule_for("signed-x").signing.trusted_keys


def test_the_revision_hashes_the_keys_not_where_they_are_written(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text(PEM)
    inline_revision = parse_policy(policy_with(inline())).revision
    assert parse_policy(policy_with("required: true\ntrusted_keys: [k.pem]\n"), base_dir=tmp_path).revision \
        == inline_revision
    other = public_pem(ec.generate_private_key(ec.SECP256R1())).decode()
    assert parse_policy(policy_with(inline(other))).revision != inline_revision
    optional = inline().replace("required: true", "required: false")
    assert parse_policy(policy_with(optional)).revision != inline_revision


def test_the_default_rule_looks_at_no_signature() -> None:
    assert not DEFAULT_RULE.signing.applies
    assert DEFAULT_RULE.to_dict()["signing"] == {"required": False, "trusted_keys": []}


def test_optional_signing_with_keys_still_applies() -> None:
    rule = parse_policy(policy_with(inline().replace("required: true", "required: false"))).rule_for("signed-x")
    assert rule.signing.applies and not rule.signing.required


def test_required_without_keys_is_an_error_saying_keyless_is_not_supported() -> None:
    assert problem(policy_with("required: true\n")) == (
        "policy.yaml:4: rules[0].signing: required: true needs trusted_keys (at least one public key): "
        "signatures are checked against keys the policy trusts (keyless Sigstore is not supported)")


@pytest.mark.parametrize("signing, expected", [
    ("required: yes please\n", "policy.yaml:4: rules[0].signing.required: "),
    ("trusted: []\n", "policy.yaml:4: rules[0].signing.trusted: unknown key 'trusted'; expected one of "
                      "required, trusted_keys"),
    ("trusted_keys: some.pem\n", "policy.yaml:4: rules[0].signing.trusted_keys: expected a list of PEM public "
                                 "keys or key file paths, got 'some.pem'"),
    ("trusted_keys: [42]\n", "policy.yaml:4: rules[0].signing.trusted_keys[0]: expected a PEM public key or a key "
                             "file path, got 42"),
    ("trusted_keys: [keys/k.pem]\n", "policy.yaml:4: rules[0].signing.trusted_keys[0]: 'keys/k.pem' is a relative "
                                     "path and this policy has no file to be relative to"),
    ("trusted_keys: [/nonexistent/k.pem]\n", "policy.yaml:4: rules[0].signing.trusted_keys[0]: cannot read the key "
                                             "file /nonexistent/k.pem: No such file or directory"),
    ("trusted_keys: ['-----BEGIN PUBLIC KEY-----\n\n        AAAA\n\n        -----END PUBLIC KEY-----']\n",
     "policy.yaml:4: rules[0].signing.trusted_keys[0]: inline key: not a PEM public key"),
    ("[required]\n", "policy.yaml:4: rules[0].signing: expected a mapping, got a list"),
])
def test_bad_signing_settings_are_named_with_file_and_line(signing: str, expected: str) -> None:
    assert problem(policy_with(signing)).startswith(expected)


def test_a_private_key_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    write_private(TEST_SIGNER, tmp_path / "oops.pem")
    message = problem(policy_with("trusted_keys: [oops.pem]\n"), tmp_path)
    assert message == (f"policy.yaml:4: rules[0].signing.trusted_keys[0]: {tmp_path / 'oops.pem'}: a private key "
                       "was given; trust the public key (openssl ec -pubout)")
    assert "PRIVATE" not in message.split(": ", 1)[1].replace("a private key", "")


def test_the_test_policy_trusts_the_test_signer_for_signed_models() -> None:
    rule = load_policy(ROOT / "tests" / "policy.yaml").rule_for("signed-anything")
    assert rule.signing.required
    assert [k.fingerprint for k in rule.signing.trusted_keys] == [FINGERPRINT]


def test_the_documented_policy_files_parse_with_signing_off() -> None:
    assert not load_policy(ROOT / "infra" / "policy.yaml").rule_for("anything").signing.required
