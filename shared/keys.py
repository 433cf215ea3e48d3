"""The registry's signing keys: one Ed25519 key per service, and the public keyring.

Every event a service emits is signed (detached, Ed25519) over the RFC 8785 canonical JSON of
the whole CloudEvent without its signature attributes. Anyone holding the keyring (a JWKS
document, `modelreg keys export`) can check who signed an event and whether that service may
emit its type: only promotion's key may sign `model.promoted`.

Private keys are files `<service>.ed25519.pem` (PKCS#8, mode 0600) outside the repository
(`modelreg stack up` writes them under the stack directory's `keys/`); a process finds its own
key through `MODELREG_SIGNING_KEY_FILE` and the keyring through `MODELREG_KEYRING_FILE`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing
import orjson
import rfc8785

# Keys live as libsodium (PyNaCl) keys and raw bytes: libsodium signs and verifies Ed25519 about
# twice as fast as OpenSSL here, and `cryptography` (about 7 MiB a process) is imported only to
# read a key file in a form other than the one `modelreg` writes.

# Which service may sign which event type: the one table every check derives from. It follows
# what each service emits (services/*/app.py and shared/events.py CATALOGUE); promotion also
# emits `model.rejected` when it quarantines a version whose stored artifact no longer hashes
# to what was validated.
EVERY_SERVICE_EVENT_TYPES: tuple[str, ...] = ("registry.audit", "registry.dlq")
SERVICE_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "ingest": ("model.ingested", "model.rejected"),
    "validation": ("model.validated", "model.rejected", "qa.requested"),
    "promotion": ("model.promoted", "model.demoted", "model.rejected"),
    "archival": ("model.archived", "model.restored"),
    "audit": (),  # the audit writer signs its checkpoints, which are registry.audit records
    # What people ask for over HTTP: outside producers' types, signed so that the registry can
    # tell the API's requests (made for a token's identity) from any other client's.
    "api": ("model.registered", "metrics.evaluated", "promotion.requested"),
    "webhooks": (),  # it signs its audit records (an endpoint disabled after a day of failures)
}
SERVICES: tuple[str, ...] = tuple(SERVICE_EVENT_TYPES)

# CloudEvents extension attributes that carry the signature; they are not signed themselves.
SIGNATURE_ATTRIBUTE = "signature"
KEY_ID_ATTRIBUTE = "signingkey"
SIGNATURE_ATTRIBUTES: tuple[str, ...] = (SIGNATURE_ATTRIBUTE, KEY_ID_ATTRIBUTE)

KEY_FILE_SUFFIX = ".ed25519.pem"
KEYRING_FILE_NAME = "keyring.json"
KEY_ID_HEX_CHARS = 16


class KeyFileError(ValueError):
    """A key file or keyring is missing or malformed; the message names the file."""


def event_types_for(service: str) -> frozenset[str]:
    """The event types `service`'s key may sign; an unknown service may sign nothing."""
    if service not in SERVICE_EVENT_TYPES:
        return frozenset()
    return frozenset(SERVICE_EVENT_TYPES[service]) | frozenset(EVERY_SERVICE_EVENT_TYPES)


def key_id(public_key: bytes) -> str:
    """First 16 hex characters of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_HEX_CHARS]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Base64url without padding (as JOSE writes it); raises ValueError on anything else."""
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise ValueError("not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64url: {exc}") from None


def canonical_event_bytes(event: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the RFC 8785 canonical JSON of the CloudEvent (as a JSON
    object, e.g. `json.loads` of the message) without its signature attributes, so that key
    order, spacing and number formatting on the wire do not matter."""
    unsigned = {k: v for k, v in event.items() if k not in SIGNATURE_ATTRIBUTES}
    try:
        return _canonical(unsigned)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, UnicodeError) as exc:
        raise ValueError(f"the event cannot be canonicalised: {exc}") from None


_MAX_SAFE_INTEGER = 2**53 - 1


class _NotPlain(Exception):
    """A value whose canonical form Python's json module does not write as RFC 8785 does."""


def _plain(value: Any) -> Any:
    """`value` with floats as RFC 8785 writes them, where the JSON encoder then writes the same
    text; raises `_NotPlain` where it would not (rare: exponents, non-ASCII keys).

    Exact type checks, most frequent first: every event is walked once per signature made or
    checked, so this runs about thirty times per model version."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is dict:
        for key in value:
            if type(key) is not str or not key.isascii():
                raise _NotPlain  # RFC 8785 sorts keys by UTF-16 code units, the encoder by bytes
        return {k: _plain(v) for k, v in value.items()}
    if kind is int:
        if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            return value
        raise _NotPlain
    if kind is list:
        return [_plain(v) for v in value]
    if kind is float:
        if value.is_integer():
            if abs(value) > _MAX_SAFE_INTEGER:
                raise _NotPlain  # ECMAScript pads the shortest digits with zeros
            return int(value)  # ECMAScript writes 1.0 as 1
        if not 1e-4 <= abs(value) < 1e16:  # where repr() and ECMAScript choose exponents differently
            raise _NotPlain
        return value  # both write the shortest round-trip digits, positionally
    raise _NotPlain  # subclasses of the JSON types, and anything else: the rfc8785 package decides


def _canonical(document: dict[str, Any]) -> bytes:
    """RFC 8785, fast: a JSON encoder with sorted keys writes the same bytes for the
    values registry events hold (a test checks it against the `rfc8785` package on many
    documents); anything else goes through the `rfc8785` package itself."""
    try:
        plain = _plain(document)
    except _NotPlain:
        return rfc8785.dumps(document)
    # orjson writes compact UTF-8 with sorted keys and the escapes RFC 8785 asks for, about
    # three times faster than the json module (the same test holds it to `rfc8785`).
    return orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)


# ---------------------------------------------------------------------------- private keys


@dataclass(frozen=True)
class SigningKey:
    """This process's private key, and the service it speaks for."""

    service: str
    signer: nacl.signing.SigningKey

    @classmethod
    def generate(cls, service: str) -> SigningKey:
        return cls(service, nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, service: str, seed: bytes) -> SigningKey:
        """The key whose 32-byte private seed (RFC 8032's private key) is `seed`."""
        return cls(service, nacl.signing.SigningKey(seed))

    @cached_property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return bytes(self.signer.verify_key)

    @cached_property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, payload: bytes) -> str:
        """A detached Ed25519 signature of `payload`, base64url without padding."""
        return b64url(self.signer.sign(payload).signature)

    def sign_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """`event` (a CloudEvent as a JSON object) with `signature` and `signingkey` set."""
        unsigned = {k: v for k, v in event.items() if k not in SIGNATURE_ATTRIBUTES}
        signature = self.sign(canonical_event_bytes(unsigned))
        return {**unsigned, SIGNATURE_ATTRIBUTE: signature, KEY_ID_ATTRIBUTE: self.key_id}

    def sign_event_bytes(self, value: bytes) -> bytes:
        """A CloudEvent's JSON message, signed (as the outbox stores and Kafka carries it).

        The signature attributes are appended to the message as it is: encoding the whole
        event again would cost as much as its canonical form. A message that already carries
        signature attributes (signed again), or is not written as one UTF-8 object, is encoded anew."""
        event = orjson.loads(value)
        if not isinstance(event, dict):
            raise ValueError(f"a CloudEvent message is a JSON object, not {type(event).__name__}")
        body = value.strip()
        if (not event or SIGNATURE_ATTRIBUTE in event or KEY_ID_ATTRIBUTE in event
                or body[:1] != b"{" or body[-1:] != b"}"):
            return json.dumps(self.sign_event(event), separators=(",", ":"), ensure_ascii=False).encode()
        signature = self.sign(canonical_event_bytes(event))
        attributes = orjson.dumps({SIGNATURE_ATTRIBUTE: signature, KEY_ID_ATTRIBUTE: self.key_id})
        return b"%s,%s}" % (body[:-1], attributes[1:-1])

    def public(self) -> PublicKey:
        return PublicKey(self.service, self.public_key, event_types_for(self.service))

    def __repr__(self) -> str:  # never the key material
        return f"SigningKey(service={self.service!r}, key_id={self.key_id!r})"


def key_file(directory: Path, service: str) -> Path:
    return Path(directory) / f"{service}{KEY_FILE_SUFFIX}"


def load_signing_key(path: Path, service: str | None = None) -> SigningKey:
    """The key in `path`; its service is `service` or else the file name's `<service>` part."""
    path = Path(path)
    if service is None:
        if not path.name.endswith(KEY_FILE_SUFFIX):
            raise KeyFileError(f"{path}: a signing key file is named <service>{KEY_FILE_SUFFIX}")
        service = path.name.removesuffix(KEY_FILE_SUFFIX)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    seed = _written_seed(pem)
    return SigningKey.from_seed(service, seed if seed is not None else _any_pem_seed(path, pem))


# RFC 8410's PKCS#8 encoding of an Ed25519 private key, as OpenSSL and `cryptography` write it:
# this DER prefix, then the 32-byte seed.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN, _PEM_END = b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"


def _written_seed(pem: bytes) -> bytes | None:
    """The seed of a key file in the one form `modelreg` writes; None for any other form."""
    body = pem.strip()
    if not body.startswith(_PEM_BEGIN) or not body.endswith(_PEM_END):
        return None
    try:
        der = base64.b64decode(b"".join(body[len(_PEM_BEGIN):-len(_PEM_END)].split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(_PKCS8_PREFIX) + 32 or not der.startswith(_PKCS8_PREFIX):
        return None
    return der[len(_PKCS8_PREFIX):]


def _any_pem_seed(path: Path, pem: bytes) -> bytes:
    """The seed of an Ed25519 key in any PEM form `cryptography` reads; a clear error otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def _write_private(path: Path, key: SigningKey) -> None:
    der = base64.encodebytes(_PKCS8_PREFIX + key.signer.encode()).decode("ascii")
    pem = f"{_PEM_BEGIN.decode()}\n{der}{_PEM_END.decode()}\n".encode("ascii")
    # Created 0600 from the start (O_EXCL): the key is never readable by others, not even
    # between create and chmod, and a concurrent `stack up` cannot overwrite a key in use.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def ensure_service_keys(directory: Path, services: Iterable[str] = SERVICES) -> dict[str, SigningKey]:
    """A key per service in `directory` (mode 0700), generating the missing ones (mode 0600);
    existing keys are kept, so a restart does not invalidate events already signed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    keys: dict[str, SigningKey] = {}
    for service in services:
        path = key_file(directory, service)
        if not path.exists():
            try:
                _write_private(path, SigningKey.generate(service))
            except FileExistsError:
                pass  # another process made it just now: use theirs
        keys[service] = load_signing_key(path, service)
    return keys


def write_keyring(directory: Path, services: Iterable[str] = SERVICES,
                  path: Path | None = None) -> Path:
    """Generate missing keys and write their public keyring (JWKS) beside them."""
    keys = ensure_service_keys(directory, services)
    keyring = Keyring(key.public() for key in keys.values())
    target = Path(path) if path is not None else Path(directory) / KEYRING_FILE_NAME
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(keyring.to_jwks(), indent=2) + "\n")
    os.chmod(temporary, 0o644)  # public by design
    temporary.replace(target)
    return target


# ---------------------------------------------------------------------------- public keyring


@dataclass(frozen=True)
class PublicKey:
    service: str
    key: bytes  # the raw 32-byte public key
    event_types: frozenset[str]

    @cached_property
    def key_id(self) -> str:
        return key_id(self.key)

    @cached_property
    def verifier(self) -> nacl.signing.VerifyKey:
        return nacl.signing.VerifyKey(self.key)

    def verifies(self, payload: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `payload` (one not 64 bytes
        long is no signature)."""
        try:
            self.verifier.verify(payload, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True

    def to_jwk(self) -> dict[str, Any]:
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(self.key), "kid": self.key_id,
                "use": "sig", "alg": "EdDSA", "modelreg_service": self.service,
                "modelreg_event_types": sorted(self.event_types)}

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> PublicKey:
        if not isinstance(jwk, Mapping):
            raise KeyFileError("a JWKS key must be a JSON object")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise KeyFileError(f"key {jwk.get('kid')!r} is not an Ed25519 (OKP) key")
        service = jwk.get("modelreg_service")
        types = jwk.get("modelreg_event_types", [])
        if not isinstance(service, str) or not service:
            raise KeyFileError(f"key {jwk.get('kid')!r} names no modelreg_service")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise KeyFileError(f"key {jwk.get('kid')!r}: modelreg_event_types must be a list of strings")
        try:
            raw = b64url_decode(jwk.get("x", ""))
        except ValueError as exc:
            raise KeyFileError(f"key {jwk.get('kid')!r} has a bad 'x': {exc}") from None
        if len(raw) != nacl.bindings.crypto_sign_PUBLICKEYBYTES:
            raise KeyFileError(f"key {jwk.get('kid')!r} has a bad 'x': an Ed25519 public key is 32 bytes, "
                               f"not {len(raw)}")
        public = cls(service, raw, frozenset(types))
        if jwk.get("kid") not in (None, public.key_id):
            # A kid that is not the key's own would let one key pose as another.
            raise KeyFileError(f"key {jwk.get('kid')!r}: kid does not match its key ({public.key_id})")
        return public


class Keyring:
    """Key id -> the service it speaks for, its public key and the event types it may sign."""

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            self._keys[key.key_id] = key

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> Keyring:
        keys = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(keys, list):
            raise KeyFileError('a keyring is a JWKS document: {"keys": [...]}')
        return cls(PublicKey.from_jwk(jwk) for jwk in keys)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            document = json.loads(Path(path).read_text())
        except OSError as exc:
            raise KeyFileError(f"cannot read the keyring {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise KeyFileError(f"the keyring {path} is not JSON: {exc}") from None
        try:
            return cls.from_jwks(document)
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc}") from None

    def to_jwks(self) -> dict[str, Any]:
        return {"keys": [key.to_jwk() for key in sorted(self._keys.values(),
                                                          key=lambda k: (k.service, k.key_id))]}

    def get(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    def service_of(self, kid: str) -> str | None:
        key = self._keys.get(kid)
        return key.service if key else None

    def verify(self, kid: str, payload: bytes, signature: str) -> bool:
        """Whether `signature` (base64url) is `kid`'s signature of `payload`."""
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            return False
        try:
            raw = b64url_decode(signature)
        except ValueError:
            return False
        return key.verifies(payload, raw)

    def may_sign(self, kid: str, event_type: str) -> bool:
        key = self._keys.get(kid) if isinstance(kid, str) else None
        return key is not None and event_type in key.event_types

    def event_problem(self, event: Mapping[str, Any]) -> str | None:
        """Why `event` (a CloudEvent as a JSON object) is not an authentic registry event, or
        None when it is signed by a key in this keyring that may sign its type."""
        kid, signature = event.get(KEY_ID_ATTRIBUTE), event.get(SIGNATURE_ATTRIBUTE)
        if not kid or not signature:
            return "the event is not signed"
        if not isinstance(kid, str) or kid not in self._keys:
            return f"the event is signed by an unknown key {str(kid)[:32]!r}"
        try:
            payload = canonical_event_bytes(event)
        except ValueError as exc:
            return str(exc)
        if not isinstance(signature, str) or not self.verify(kid, payload, signature):
            return f"the signature does not match the event (key {kid}, service {self.service_of(kid)})"
        if not self.may_sign(kid, str(event.get("type"))):
            return f"key {kid} of service {self.service_of(kid)} may not sign {event.get('type')!r} events"
        return None

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)


def load_keyring(path: Path | None) -> Keyring:
    """The keyring at `path` (MODELREG_KEYRING_FILE); none set is an error naming the setting."""
    if path is None:
        raise KeyFileError("MODELREG_KEYRING_FILE is not set: it names the public keyring (JWKS) "
                           "file (`modelreg stack up` writes one; `modelreg keys export` prints it)")
    return Keyring.load(path)


def load_own_key(path: Path | None) -> SigningKey:
    """This process's key from MODELREG_SIGNING_KEY_FILE; none set is an error naming it."""
    if path is None:
        raise KeyFileError("MODELREG_SIGNING_KEY_FILE is not set: it names this service's "
                           "private key file (<service>.ed25519.pem)")
    return load_signing_key(path)
