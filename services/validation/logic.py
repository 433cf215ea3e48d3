"""validation's decisions: each check's result from facts about the artifact and the policy."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import Check, ModelIngestedData, Reason
from shared.policy import ValidationRule

from .scan import PICKLE_FORMATS, worth_scanning

__all__ = ["PICKLE_FORMATS", "ArtifactFacts", "artifact_label", "needs_scan", "rejection_reasons", "run_checks"]

# The reason code a failed check rejects a version with.
REJECTION_CODES = {
    "artifact_present": "artifact_missing",
    "checksum": "checksum_mismatch",
    "size_limit": "too_large",
    "required_metadata": "missing_metadata",
    "allowed_format": "format_not_allowed",
    "pickle_safety": "unsafe_pickle",
}


@dataclass(frozen=True)
class ArtifactFacts:
    """What reading the stored artifact found."""

    present: bool
    sha256: str | None = None
    size_bytes: int | None = None
    scanned: bool = False
    pickle_safe: bool | None = None
    pickle_detail: str | None = None


def run_checks(ingested: ModelIngestedData, facts: ArtifactFacts, rule: ValidationRule) -> list[Check]:
    artifact = ingested.artifact
    checks = [Check(name="artifact_present", passed=facts.present,
                    detail=artifact.uri if facts.present else f"{artifact.uri} is not in the registry bucket")]
    if facts.present:
        matches = facts.sha256 == artifact.sha256
        checks.append(Check(name="checksum", passed=matches,
                            detail="sha256 matches" if matches
                            else f"expected sha256 {artifact.sha256}, found {facts.sha256}"))
    size = facts.size_bytes if facts.size_bytes is not None else artifact.size_bytes
    if rule.max_size_bytes is not None and size is not None:
        checks.append(Check(name="size_limit", passed=size <= rule.max_size_bytes,
                            detail=f"{size} bytes; the limit is {rule.max_size_bytes}"))
    if rule.required_metadata:
        missing = [field for field in rule.required_metadata if not getattr(ingested, field, None)]
        checks.append(Check(name="required_metadata", passed=not missing,
                            detail=f"missing: {', '.join(missing)}" if missing
                            else f"present: {', '.join(rule.required_metadata)}"))
    if rule.allowed_formats is not None:
        allowed = artifact.format in rule.allowed_formats
        checks.append(Check(name="allowed_format", passed=allowed,
                            detail=f"format {artifact.format or 'unknown'}; allowed: "
                                   f"{', '.join(rule.allowed_formats)}"))
    if facts.scanned:
        checks.append(Check(name="pickle_safety", passed=bool(facts.pickle_safe),
                            detail=facts.pickle_detail))
    return checks


def rejection_reasons(checks: list[Check]) -> list[Reason]:
    return [Reason(code=REJECTION_CODES.get(c.name, c.name), message=f"{c.name}: {c.detail or 'failed'}")
            for c in checks if not c.passed]


def needs_scan(declared_format: str | None, head: bytes) -> bool:
    """Scan declared pickle formats (strictly) and checked formats (safetensors, ONNX, ...),
    and anything whose first bytes could start a pickle, a compressed stream, an archive or a
    checked format, whatever format it claims."""
    return worth_scanning(declared_format, head)


def artifact_label(ingested: ModelIngestedData) -> str:
    """How rejection reasons name the artifact: `fraud-scorer.joblib (zlib stream)`."""
    fmt = ingested.artifact.format
    return f"{ingested.name}.{fmt}" if fmt else ingested.name
