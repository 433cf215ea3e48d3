"""Signed events on the bus: services sign what they emit, consumers check what they read.

Every event a service writes to its outbox is signed with the service's Ed25519 key (see
`shared/keys.py` for the keys, the keyring and the canonical form), so a record on an internal
topic is only believed when a key of the keyring that may sign its type signed it. What fails
the check is dead-lettered as `forged` and changes nothing. Outside producers' topics
(`model.registered`, `metrics.evaluated`, `promotion.requested`) are guarded by the broker's
ACLs instead; they are not required to carry a registry signature.

A process may host several services (the tests run them all in one), so the keys are held per
service name: `ServiceApp` registers its key at start, and the outbox signs with the key of
the service that writes the rows. Writing rows for a service without a key is refused: an
unsigned event would only be dead-lettered downstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from shared.keys import (
    KEY_ID_ATTRIBUTE,
    SIGNATURE_ATTRIBUTE,
    KeyFileError,
    Keyring,
    SigningKey,
    key_file,
    load_own_key,
)

# Topics only the registry's services write; every record on them must be signed.
INTERNAL_TOPICS: frozenset[str] = frozenset({
    "model.ingested", "model.validated", "model.rejected", "qa.requested", "model.promoted",
    "model.demoted", "model.archived", "model.restored", "registry.audit", "registry.dlq",
})

_keys: dict[str, SigningKey] = {}


class MissingSigningKey(RuntimeError):
    """A service emitted events without a signing key registered for it."""


def register(service: str, key: SigningKey) -> None:
    """Sign `service`'s events with `key` from now on (in this process)."""
    if key.service != service:
        raise ValueError(f"the key of {key.service!r} cannot sign for {service!r}")
    _keys[service] = key


def forget(service: str) -> None:
    _keys.pop(service, None)


def signing_key(service: str) -> SigningKey:
    """`service`'s registered key (promotion signs its attestations with it)."""
    key = _keys.get(service)
    if key is None:
        raise MissingSigningKey(f"no signing key is registered for {service!r}: set "
                                "MODELREG_SIGNING_KEY_FILE (`modelreg stack up` makes one per service)")
    return key


def sign_value(service: str, value: bytes) -> bytes:
    """A CloudEvent's JSON bytes with `signature` and `signingkey` set by `service`'s key."""
    return signing_key(service).sign_event_bytes(value)


# Who may write an outside topic, as the broker's ACLs say (shared/kafka_acls.py): an unsigned
# event there is attributed to that role, never to the `source` it claims.
OUTSIDE_WRITERS: dict[str, str] = {
    "model.registered": "pipeline", "metrics.evaluated": "qa", "promotion.requested": "ops",
}


def check(keyring: Keyring, topic: str, value: bytes | None) -> tuple[str | None, str | None]:
    """(why the record is not believed, or None; who sent it). An internal topic's record must
    be signed by a key that may sign its type. An outside topic's record may be signed (the
    API signs what it publishes for a token's identity); if it is, the signature must hold;
    if not, it is attributed to the role the broker's ACLs let write the topic."""
    try:
        # orjson: a third of the json module's time, for what every consumer does per record.
        document: Any = orjson.loads(value or b"")
    except ValueError:
        return "the event is not JSON", None
    if not isinstance(document, dict):
        return "the event is not a JSON object", None
    signed = SIGNATURE_ATTRIBUTE in document or KEY_ID_ATTRIBUTE in document
    if topic not in INTERNAL_TOPICS and not signed:
        return None, f"acl:{OUTSIDE_WRITERS.get(topic, 'unknown')}"
    problem = keyring.event_problem(document)
    if problem is not None:
        return problem, None
    return None, f"key:{keyring.service_of(document[KEY_ID_ATTRIBUTE])}"


def service_key(configured: Path | None, service: str) -> SigningKey:
    """`service`'s key from MODELREG_SIGNING_KEY_FILE: the key file itself, or a directory
    holding `<service>.ed25519.pem` (one host running several services)."""
    if configured is not None and Path(configured).is_dir():
        configured = key_file(Path(configured), service)
    key = load_own_key(configured)
    if key.service != service:
        raise KeyFileError(f"MODELREG_SIGNING_KEY_FILE names {key.service!r}'s key; "
                           f"the {service} service signs with its own")
    return key
