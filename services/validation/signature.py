"""validation's decision on model signatures: when a rule looks at them, what the check says.

The verification itself (bundle, key, statement against the manifest) is in
`shared/model_signatures.py`; this only decides what applies to a version and turns the
verdict into a check. Plain functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from shared.events import Check
from shared.manifest import FileEntry
from shared.model_signatures import (
    INVALID,
    MAX_SIGNATURE_BYTES,
    MISSING,
    SIGNATURE_FILE,
    SignatureVerdict,
    signature_entry,
    verify_model_signature,
)
from shared.policy import SigningRule

CHECK = "signature"


def signature_to_read(rule: SigningRule, manifest: Sequence[FileEntry] | None) -> FileEntry | None:
    """The manifest entry of the model.sig to fetch, when the rule looks at signatures and the
    directory has one of a size worth reading."""
    if not rule.applies or manifest is None:
        return None
    entry = signature_entry(manifest)
    return entry if entry is not None and entry.size_bytes <= MAX_SIGNATURE_BYTES else None


def judge_signature(rule: SigningRule, manifest: Sequence[FileEntry] | None,
                    bundle: bytes | None) -> SignatureVerdict | None:
    """The verdict on a version's signature; None when the rule does not look at signatures, or
    when it does not require one and the version has none. `bundle` is the stored model.sig's
    bytes (None: not read, because absent or too large)."""
    if not rule.applies:
        return None
    if manifest is None:
        if not rule.required:
            return None
        return SignatureVerdict(MISSING, "a single-file artifact carries no signature: register a "
                                         f"directory holding the file and its {SIGNATURE_FILE}")
    entry = signature_entry(manifest)
    if entry is None:
        if not rule.required:
            return None
        return SignatureVerdict(MISSING, f"the directory has no {SIGNATURE_FILE} and the policy requires a "
                                         "signature by a trusted key")
    if bundle is None:
        return SignatureVerdict(INVALID, f"{SIGNATURE_FILE} ({entry.size_bytes} bytes) is larger than "
                                         f"{MAX_SIGNATURE_BYTES} bytes or could not be read")
    if hashlib.sha256(bundle).hexdigest() != entry.sha256:
        return SignatureVerdict(INVALID, f"{SIGNATURE_FILE} is not the file the manifest lists")
    return verify_model_signature(bundle, rule.trusted_keys, manifest)


def signature_check(verdict: SignatureVerdict) -> Check:
    return Check(name=CHECK, passed=verdict.verified, detail=verdict.message)
