"""validation's decisions: each check's result from facts about the artifact and the policy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from shared.events import Check, ModelIngestedData, Reason
from shared.manifest import Discrepancy, describe
from shared.policy import ValidationRule

from .scan import PICKLE_FORMATS, ArtifactScan, worth_scanning
from .scan.content import CHECKED_FORMATS

__all__ = ["PICKLE_FORMATS", "ArtifactFacts", "artifact_label", "combine_scans", "declared_format_problem",
           "file_format", "needs_scan", "rejection_reasons", "run_checks", "siblings_of"]

# The reason code a failed check rejects a version with.
REJECTION_CODES = {
    "artifact_present": "artifact_missing",
    "checksum": "checksum_mismatch",
    "size_limit": "too_large",
    "required_metadata": "missing_metadata",
    "allowed_format": "format_not_allowed",
    "pickle_safety": "unsafe_pickle",
    "file_limit": "too_many_files",
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
    # A directory artifact: each file that differs from the manifest (None: a single file).
    discrepancies: tuple[Discrepancy, ...] | None = None


def run_checks(ingested: ModelIngestedData, facts: ArtifactFacts, rule: ValidationRule) -> list[Check]:
    artifact = ingested.artifact
    if facts.discrepancies is not None and artifact.files is not None:
        checks = _directory_checks(ingested, facts.discrepancies, rule)
    else:
        checks = _file_checks(ingested, facts, rule)
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


def _directory_checks(ingested: ModelIngestedData, found: tuple[Discrepancy, ...],
                      rule: ValidationRule) -> list[Check]:
    """Every file of the manifest read back from the registry's copy: missing ones fail
    `artifact_present`, changed and extra ones `checksum`; each is named."""
    artifact = ingested.artifact
    files = artifact.files or []
    missing = [d for d in found if d.kind == "missing"]
    altered = [d for d in found if d.kind != "missing"]
    checks = [
        Check(name="artifact_present", passed=not missing,
              detail=f"{artifact.uri}: missing {describe(missing)}" if missing
              else f"{artifact.uri}: all {len(files)} files present"),
        Check(name="checksum", passed=not altered,
              detail=describe(altered) if altered
              else f"every file matches the manifest (sha256 {artifact.sha256})"),
    ]
    total = sum(f.size_bytes for f in files)
    if rule.max_size_bytes is not None:
        checks.append(Check(name="size_limit", passed=total <= rule.max_size_bytes,
                            detail=f"{total} bytes in {len(files)} files; the limit is {rule.max_size_bytes}"))
    checks.append(Check(name="file_limit", passed=len(files) <= rule.max_files,
                        detail=f"{len(files)} files; the limit is {rule.max_files}"))
    return checks


def _file_checks(ingested: ModelIngestedData, facts: ArtifactFacts, rule: ValidationRule) -> list[Check]:
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
    return checks


def rejection_reasons(checks: list[Check], codes: Mapping[str, str] | None = None) -> list[Reason]:
    """A reason per failed check; `codes` names the code of checks whose code depends on how
    they failed (the signature: signature_missing, _invalid, _untrusted, _mismatch)."""
    codes = {**REJECTION_CODES, **(codes or {})}
    return [Reason(code=codes.get(c.name, c.name), message=f"{c.name}: {c.detail or 'failed'}")
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


# ------------------------------------------------------------------------ directory artifacts

# What a file of a directory is checked as, by its suffix (as archive members are).
SUFFIX_FORMATS = {".pkl": "pickle", ".pickle": "pickle", ".joblib": "joblib", ".pt": "pt", ".pth": "pth",
                  ".ckpt": "ckpt", ".dill": "dill", ".onnx": "onnx", ".safetensors": "safetensors",
                  ".gguf": "gguf", ".keras": "keras", ".h5": "h5", ".hdf5": "hdf5"}
_FAMILIES = ({*PICKLE_FORMATS}, {"keras", "h5", "hdf5"})


def _family(fmt: str | None) -> frozenset[str]:
    for family in _FAMILIES:
        if fmt in family:
            return frozenset(family)
    return frozenset({fmt}) if fmt else frozenset()


def file_format(declared: str | None, path: str) -> str | None:
    """The format one file of a directory artifact is checked as: its suffix says (`model.pkl`
    is a pickle, parsed strictly, whatever the directory declares; `model.onnx` is ONNX). A
    `.bin` file takes a declared pickle-family format (PyTorch's `pytorch_model.bin`). Every
    other file is sniffed (no format): content that looks like a pickle or archive is still
    scanned."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    declared = (declared or "").lower() or None
    if suffix == ".bin" and declared in PICKLE_FORMATS:
        return declared
    return None


def declared_format_problem(declared: str | None, paths: Iterable[str]) -> str | None:
    """A directory declared a pickle or checked format must hold a file of that format."""
    declared = (declared or "").lower() or None
    if declared not in PICKLE_FORMATS and declared not in CHECKED_FORMATS:
        return None
    family = _family(declared)
    if any(file_format(declared, path) in family for path in paths):
        return None
    suffixes = sorted(s for s, f in SUFFIX_FORMATS.items() if f in family)
    return f"declared {declared} but no file of the directory is one (no {', '.join(suffixes)} file)"


def siblings_of(path: str, paths: Iterable[str]) -> frozenset[str]:
    """The directory's other files relative to `path`'s folder (ONNX external data must be one)."""
    folder = PurePosixPath(path).parent
    return frozenset(str(PurePosixPath(p).relative_to(folder)) for p in paths
                     if p != path and PurePosixPath(p).is_relative_to(folder))


def combine_scans(scans: dict[str, ArtifactScan], problem: str | None) -> tuple[bool, bool, str]:
    """(scanned, safe, detail) of a directory from its files' scans (by path) and the declared
    format's problem; unsafe files are named by their findings."""
    unsafe = [(path, scan) for path, scan in sorted(scans.items()) if not scan.safe]
    examined = [path for path, scan in scans.items() if scan.examined]
    if problem is None and not unsafe:
        imports = len({name for scan in scans.values() for name in scan.imports})
        return bool(examined), True, (f"{len(examined)} of {len(scans)} files scanned, "
                                      f"{imports} distinct import{'' if imports == 1 else 's'}, all allowed")
    parts = ([problem] if problem else []) + [scan.detail() for _, scan in unsafe[:12]]
    if len(unsafe) > 12:
        parts.append(f"and {len(unsafe) - 12} more unsafe files")
    detail = "; ".join(parts)
    return True, False, detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL - 3] + "..."


MAX_DETAIL = 8000  # a check's detail is at most 10,000 characters (the contract's LongText)
