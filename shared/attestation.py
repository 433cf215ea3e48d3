"""The registry's attestation of what it promotes: an in-toto statement in a DSSE envelope,
signed with promotion's Ed25519 key (the same key and JWKS as its events), carried on
`model.promoted` as `attestation`.

A deployment system keeps the envelope with the artifact and checks, offline, that the
registry promoted exactly these bytes (the subject's sha256: the file's digest, or a directory's
manifest digest) to this stage under this policy revision, after these gates. The envelope
stands alone: it does not need the CloudEvent around it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from shared.keys import Keyring, SigningKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://modelreg.dev/attestations/promotion/v1"
# The event type whose signing permission (the JWKS key's modelreg_event_types) an
# attestation needs: only promotion's key may vouch for a promotion.
ATTESTS = "model.promoted"


class AttestationError(ValueError):
    """The envelope is not the registry's attestation: malformed, unknown key, bad signature."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def passed_gates(evidence: Mapping[str, Any]) -> list[str]:
    """The names of the gates a promotion's evidence shows passed (policy promotions)."""
    gates = evidence.get("gates")
    if not isinstance(gates, list):
        return []
    return [str(g["gate"]) for g in gates if isinstance(g, Mapping) and g.get("passed") and "gate" in g]


def promotion_statement(*, name: str, version: int, from_stage: str, to_stage: str, reason: str,
                        artifact_uri: str, sha256: str, policy_revision: str, evidence: Mapping[str, Any],
                        previous_champion: int | None, promoted_at: datetime) -> dict[str, Any]:
    """The in-toto statement of one promotion: the artifact as subject, the decision as predicate."""
    approvers = evidence.get("approvers")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"{name}@{version}", "uri": artifact_uri, "digest": {"sha256": sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "name": name, "version": version, "from_stage": from_stage, "stage": to_stage, "reason": reason,
            "policy_revision": policy_revision, "gates_passed": passed_gates(evidence),
            "approvers": list(approvers) if isinstance(approvers, Sequence) and not isinstance(approvers, str)
            else [],
            "previous_champion": previous_champion,
            "artifact": {"uri": artifact_uri, "sha256": sha256, "directory": artifact_uri.endswith("/")},
            "promoted_at": promoted_at.isoformat().replace("+00:00", "Z"),
        },
    }


def sign_statement(key: SigningKey, statement: Mapping[str, Any]) -> dict[str, Any]:
    """A DSSE envelope of `statement` signed by `key` (keyid: its JWKS kid)."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    signature = key.signer.sign(pae(PAYLOAD_TYPE, payload)).signature
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": key.key_id, "sig": base64.b64encode(signature).decode()}]}


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise AttestationError(f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError(f"{what} is not base64") from None


def verify_attestation(envelope: Mapping[str, Any], keyring: Keyring) -> dict[str, Any]:
    """The statement, if a keyring key that may sign `model.promoted` signed the envelope;
    AttestationError saying why not otherwise."""
    if not isinstance(envelope, Mapping) or envelope.get("payloadType") != PAYLOAD_TYPE:
        raise AttestationError(f"not a DSSE envelope of {PAYLOAD_TYPE}")
    payload = _b64(envelope.get("payload"), "the payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise AttestationError("the envelope carries no signature")
    problems = []
    for entry in signatures:
        kid = entry.get("keyid") if isinstance(entry, Mapping) else None
        key = keyring.get(kid) if isinstance(kid, str) else None
        if key is None:
            problems.append(f"unknown key {str(kid)[:32]!r}")
            continue
        if ATTESTS not in key.event_types:
            problems.append(f"key {kid} of service {key.service} may not attest promotions")
            continue
        if not key.verifies(pae(PAYLOAD_TYPE, payload), _b64(entry.get("sig"), "a signature")):
            problems.append(f"the signature of key {kid} does not match the statement")
            continue
        statement = json.loads(payload)
        if not isinstance(statement, dict) or statement.get("predicateType") != PREDICATE_TYPE:
            raise AttestationError(f"the signed statement is not a {PREDICATE_TYPE}")
        return statement
    raise AttestationError("; ".join(problems))
