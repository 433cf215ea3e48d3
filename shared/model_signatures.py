"""Model signatures (OpenSSF model signing, the `model-signing` package 1.x, key-based): trusted
keys and the verification of a signature against a directory artifact's manifest.

A signature is the file `model.sig` at the top of a directory artifact, as
`model_signing sign key DIR --private_key key.pem --signature DIR/model.sig` writes it: a
Sigstore bundle (media type v0.3) whose DSSE envelope holds an in-toto statement
(predicate `https://model_signing/signature/v1.0`) listing every signed file's SHA-256. The
envelope is signed with an elliptic-curve key (P-256, P-384 or P-521, ECDSA over the DSSE
pre-authentication encoding). Verification needs no network and no Sigstore client: only
`cryptography`. Keyless (Sigstore certificate) bundles are refused as untrusted.

A version is believed when a key the policy trusts signed the statement AND the statement's
files and digests equal the version's manifest (less `model.sig` itself) exactly: a changed,
added or missing file is named. Plain functions over bytes and plain data; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.manifest import Discrepancy, FileEntry, describe, path_problem

SIGNATURE_FILE = "model.sig"  # at the top of the directory; not itself signed
MAX_SIGNATURE_BYTES = 4 * 1024 * 1024  # a statement of 1000 files is about 200 KiB
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_OLD_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"
# `cryptography` (about 7 MiB a process) is imported where a key or a signature is read, so that
# a service that never meets one (most of them) does not load it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec
# The hash each curve's ECDSA signatures use (as model_signing signs), by `cryptography` name.
_CURVE_HASHES: dict[str, str] = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}

# Why a version's signature is not believed (model.rejected reason codes).
MISSING, INVALID, UNTRUSTED, MISMATCH = ("signature_missing", "signature_invalid", "signature_untrusted",
                                         "signature_mismatch")


# ---------------------------------------------------------------------------- trusted keys


@dataclass(frozen=True, eq=False)
class TrustedKey:
    """A public key the policy trusts to sign models."""

    public_key: ec.EllipticCurvePublicKey

    @cached_property
    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the key's SubjectPublicKeyInfo PEM: what model_signing writes as the
        bundle's `verificationMaterial.publicKey.hint`."""
        return hashlib.sha256(self.pem).hexdigest()

    @property
    def short(self) -> str:
        return self.fingerprint[:16]

    def __repr__(self) -> str:
        return f"TrustedKey({self.short})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrustedKey) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)


def load_trusted_key(pem: bytes | str) -> TrustedKey:
    """A PEM public key (`-----BEGIN PUBLIC KEY-----`) on P-256, P-384 or P-521; ValueError
    saying what is wrong otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = pem.encode() if isinstance(pem, str) else pem
    if b"PRIVATE KEY" in data:
        raise ValueError("a private key was given; trust the public key (openssl ec -pubout)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"a {type(key).__name__.removeprefix('_')} key; model signing keys are "
                         "elliptic-curve (P-256, P-384 or P-521)")
    if key.curve.name not in _CURVE_HASHES:
        raise ValueError(f"curve {key.curve.name} is not supported (P-256, P-384 or P-521)")
    return TrustedKey(key)


# ---------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class SignatureVerdict:
    """The outcome: `code` None when a trusted key signed exactly the manifest's files."""

    code: str | None
    message: str
    key: str | None = None  # the trusted key's fingerprint, when one verified the envelope

    @property
    def verified(self) -> bool:
        return self.code is None


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _Refused(INVALID, f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Refused(INVALID, f"{what} is not base64") from None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the envelope's signatures cover."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _envelope(bundle: bytes) -> tuple[dict[str, Any], str | None]:
    """The DSSE envelope and the signer's key hint, after the bundle's shape is checked."""
    if len(bundle) > MAX_SIGNATURE_BYTES:
        raise _Refused(INVALID, f"{SIGNATURE_FILE} is larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        document = json.loads(bundle)
    except (ValueError, UnicodeDecodeError):
        raise _Refused(INVALID, f"{SIGNATURE_FILE} is not a JSON Sigstore bundle") from None
    if not isinstance(document, dict):
        raise _Refused(INVALID, f"{SIGNATURE_FILE} is not a JSON Sigstore bundle")
    if document.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise _Refused(INVALID, f"{SIGNATURE_FILE} is not a Sigstore bundle of media type "
                                f"{BUNDLE_MEDIA_TYPE} (model_signing 1.x writes it)")
    material = document.get("verificationMaterial")
    material = material if isinstance(material, dict) else {}
    if "certificate" in material or "x509CertificateChain" in material:
        raise _Refused(UNTRUSTED, "a keyless (Sigstore certificate) signature: only signatures made "
                                  "with a key the policy trusts are accepted")
    envelope = document.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise _Refused(INVALID, f"{SIGNATURE_FILE} holds no DSSE envelope")
    if envelope.get("payloadType") != IN_TOTO_PAYLOAD_TYPE:
        raise _Refused(INVALID, f"the envelope's payload is not {IN_TOTO_PAYLOAD_TYPE}")
    public = material.get("publicKey")
    hint = public.get("hint") if isinstance(public, dict) else None
    return envelope, hint if isinstance(hint, str) and hint else None


def _signer(envelope: dict[str, Any], hint: str | None, trusted: Sequence[TrustedKey]) -> tuple[TrustedKey, bytes]:
    """The trusted key whose signature over the envelope holds, and the payload it covers."""
    payload = _b64(envelope.get("payload"), "the envelope's payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, dict) for s in signatures):
        raise _Refused(INVALID, "the envelope carries no signature")
    if not trusted:
        raise _Refused(UNTRUSTED, "the policy trusts no key to sign this model")
    # The hint is not signed: it only picks the key to try; the signature must then hold.
    candidates = [k for k in trusted if k.fingerprint == hint] if hint else list(trusted)
    if not candidates:
        raise _Refused(UNTRUSTED, f"signed by key {hint[:16] if hint else '?'}, which the policy does "
                                  "not trust")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signed = pae(IN_TOTO_PAYLOAD_TYPE, payload)
    for entry in signatures:
        raw = _b64(entry.get("sig"), "a signature")
        for key in candidates:
            algorithm = getattr(hashes, _CURVE_HASHES[key.public_key.curve.name])()
            try:
                key.public_key.verify(raw, signed, ec.ECDSA(algorithm))
            except InvalidSignature:
                continue
            return key, payload
    if hint:
        raise _Refused(INVALID, f"the signature does not verify with key {hint[:16]} (the signed "
                                "statement or signature was altered)")
    raise _Refused(UNTRUSTED, "no key the policy trusts made this signature")


def signed_files(payload: bytes) -> dict[str, str]:
    """The statement's files: path -> sha256 (hex), after checking it is a model_signing v1.0
    statement of whole files hashed with SHA-256 whose root digest is consistent."""
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise _Refused(INVALID, "the signed statement is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise _Refused(INVALID, f"the signed payload is not an in-toto {STATEMENT_TYPE}")
    predicate_type = statement.get("predicateType")
    if predicate_type == _OLD_PREDICATE_TYPE:
        raise _Refused(INVALID, "a pre-1.0 model_signing statement; sign again with model_signing 1.x")
    if predicate_type != PREDICATE_TYPE:
        raise _Refused(INVALID, f"predicate type {str(predicate_type)[:80]!r} is not {PREDICATE_TYPE}")
    predicate = statement.get("predicate")
    serialization_ = predicate.get("serialization") if isinstance(predicate, dict) else None
    if not isinstance(serialization_, dict):
        raise _Refused(INVALID, "the statement has no serialization")
    if serialization_.get("method") != "files" or serialization_.get("hash_type") != "sha256":
        raise _Refused(INVALID, f"signed as {serialization_.get('method')!r} with "
                                f"{serialization_.get('hash_type')!r}; the registry compares whole files "
                                "by SHA-256 (model_signing's default: method files, hash sha256)")
    resources = predicate.get("resources")  # type: ignore[union-attr]
    subjects = statement.get("subject")
    if not isinstance(resources, list) or not isinstance(subjects, list) or len(subjects) != 1:
        raise _Refused(INVALID, "the statement needs one subject and a list of resources")
    files: dict[str, str] = {}
    root = hashlib.sha256()
    for resource in resources:
        name, digest = (resource.get("name"), resource.get("digest")) if isinstance(resource, dict) else (None, None)
        if not isinstance(name, str) or path_problem(name) or resource.get("algorithm") != "sha256":
            raise _Refused(INVALID, f"the statement lists a bad resource {str(name)[:80]!r}")
        try:
            raw = bytes.fromhex(digest) if isinstance(digest, str) and len(digest) == 64 else None
        except ValueError:
            raw = None
        if raw is None or name in files:
            raise _Refused(INVALID, f"the statement lists {name!r} with a bad digest or twice")
        root.update(raw)
        files[name] = raw.hex()
    subject = subjects[0].get("digest") if isinstance(subjects[0], dict) else None
    if not isinstance(subject, dict) or subject.get("sha256") != root.hexdigest():
        raise _Refused(INVALID, "the statement's subject digest is not the digest of its resources")
    return files


def signature_discrepancies(signed: dict[str, str], manifest: Iterable[FileEntry]) -> list[Discrepancy]:
    """Each file where the signed statement and the manifest (less model.sig) differ: changed
    since signing, in the artifact but not signed, or signed but not in the artifact."""
    present = {e.path: e.sha256 for e in manifest if e.path != SIGNATURE_FILE}
    problems = [Discrepancy(path, "extra", "not signed (added after signing)")
                for path in present if path not in signed]
    problems += [Discrepancy(path, "missing", "signed but missing from the artifact")
                 for path in signed if path not in present]
    problems += [Discrepancy(path, "changed", f"changed since signing: sha256 {sha}, signed {signed[path]}")
                 for path, sha in present.items() if path in signed and signed[path] != sha]
    return sorted(problems, key=lambda d: d.path.encode())


def verify_model_signature(bundle: bytes, trusted: Sequence[TrustedKey],
                           manifest: Sequence[FileEntry]) -> SignatureVerdict:
    """Whether `bundle` (the bytes of model.sig) is a signature by a trusted key of exactly
    the files `manifest` lists (model.sig excepted)."""
    key: TrustedKey | None = None
    try:
        envelope, hint = _envelope(bundle)
        key, payload = _signer(envelope, hint, trusted)
        files = signed_files(payload)
    except _Refused as refused:
        return SignatureVerdict(refused.code, refused.message, key.fingerprint if key else None)
    problems = signature_discrepancies(files, manifest)
    if problems:
        return SignatureVerdict(MISMATCH, f"the artifact differs from what key {key.short} signed: "
                                          f"{describe(problems)}", key.fingerprint)
    return SignatureVerdict(None, f"signed by trusted key {key.short}: all {len(files)} files match the "
                                  "signed statement", key.fingerprint)


def signature_entry(manifest: Iterable[FileEntry]) -> FileEntry | None:
    """The manifest's model.sig, if the directory has one."""
    return next((e for e in manifest if e.path == SIGNATURE_FILE), None)
