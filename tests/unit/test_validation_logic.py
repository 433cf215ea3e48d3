"""validation's checks: which run under which rule, what each reports, and the codes they reject with."""

from __future__ import annotations

from typing import Any

import pytest

from services.validation.logic import (
    PICKLE_FORMATS,
    REJECTION_CODES,
    ArtifactFacts,
    artifact_label,
    needs_scan,
    rejection_reasons,
    run_checks,
)
from shared.events import Check, ModelIngestedData, Reason
from shared.policy import ValidationRule, parse_policy

SHA = "a" * 64
OTHER_SHA = "b" * 64
URI = "s3://modelreg/artifacts/m/1/" + SHA
NO_LIMITS = ValidationRule(max_size_bytes=None)


def ingested(*, format: str | None = "onnx", size_bytes: int | None = 100, **fields: Any) -> ModelIngestedData:
    artifact = {"uri": URI, "sha256": SHA, "size_bytes": size_bytes, "format": format}
    return ModelIngestedData.model_validate({"name": "m", "version": 1, "artifact": artifact, **fields})


def good_facts(**overrides: Any) -> ArtifactFacts:
    return ArtifactFacts(**{"present": True, "sha256": SHA, "size_bytes": 100, **overrides})


def checks_by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def names(checks: list[Check]) -> list[str]:
    return [c.name for c in checks]


# ---------------------------------------------------------------------------- which checks run


def test_a_rule_without_limits_runs_only_presence_and_checksum() -> None:
    checks = run_checks(ingested(), good_facts(), NO_LIMITS)
    assert [(c.name, c.passed) for c in checks] == [("artifact_present", True), ("checksum", True)]


def test_every_check_runs_under_a_rule_that_asks_for_all_of_them() -> None:
    rule = ValidationRule(max_size_bytes=1000, required_metadata=("run_id",), allowed_formats=("onnx",))
    checks = run_checks(ingested(run_id="r1"), good_facts(scanned=True, pickle_safe=True), rule)
    assert names(checks) == ["artifact_present", "checksum", "size_limit", "required_metadata",
                             "allowed_format", "pickle_safety"]
    assert all(c.passed for c in checks)


def test_the_default_policy_checks_the_size_but_not_metadata_or_format() -> None:
    rule = parse_policy('rules:\n  - match: "*"\n').rules[0].validation
    assert names(run_checks(ingested(), good_facts(), rule)) == ["artifact_present", "checksum", "size_limit"]


# ---------------------------------------------------------------------------- presence and checksum


def test_a_present_artifact_names_its_uri() -> None:
    present = checks_by_name(run_checks(ingested(), good_facts(), NO_LIMITS))["artifact_present"]
    assert present.passed is True and present.detail == URI


def test_a_missing_artifact_fails_and_skips_the_checksum() -> None:
    checks = run_checks(ingested(), ArtifactFacts(present=False), NO_LIMITS)
    assert [(c.name, c.passed) for c in checks] == [("artifact_present", False)]
    assert checks[0].detail == f"{URI} is not in the registry bucket"


def test_a_checksum_mismatch_names_both_digests() -> None:
    checksum = checks_by_name(run_checks(ingested(), good_facts(sha256=OTHER_SHA), NO_LIMITS))["checksum"]
    assert checksum.passed is False
    assert checksum.detail == f"expected sha256 {SHA}, found {OTHER_SHA}"


def test_a_matching_checksum_says_so() -> None:
    checksum = checks_by_name(run_checks(ingested(), good_facts(), NO_LIMITS))["checksum"]
    assert checksum.passed is True and checksum.detail == "sha256 matches"


def test_an_unread_digest_is_a_mismatch() -> None:
    checksum = checks_by_name(run_checks(ingested(), good_facts(sha256=None), NO_LIMITS))["checksum"]
    assert checksum.passed is False and SHA in (checksum.detail or "")


# ---------------------------------------------------------------------------- size limit


@pytest.mark.parametrize("size,passed", [(0, True), (999, True), (1000, True), (1001, False)])
def test_the_size_limit_allows_exactly_the_limit(size: int, passed: bool) -> None:
    rule = ValidationRule(max_size_bytes=1000)
    check = checks_by_name(run_checks(ingested(), good_facts(size_bytes=size), rule))["size_limit"]
    assert check.passed is passed
    assert check.detail == f"{size} bytes; the limit is 1000"


def test_the_measured_size_wins_over_the_declared_one() -> None:
    rule = ValidationRule(max_size_bytes=1000)
    check = checks_by_name(run_checks(ingested(size_bytes=10), good_facts(size_bytes=5000), rule))["size_limit"]
    assert check.passed is False and check.detail is not None and check.detail.startswith("5000 bytes")


def test_the_declared_size_is_judged_when_nothing_was_measured() -> None:
    rule = ValidationRule(max_size_bytes=1000)
    checks = checks_by_name(run_checks(ingested(size_bytes=5000), ArtifactFacts(present=False), rule))
    assert checks["size_limit"].passed is False


def test_no_size_at_all_means_no_size_check() -> None:
    rule = ValidationRule(max_size_bytes=1000)
    checks = run_checks(ingested(size_bytes=None), good_facts(size_bytes=None), rule)
    assert "size_limit" not in names(checks)


def test_no_size_limit_means_no_size_check() -> None:
    assert "size_limit" not in names(run_checks(ingested(), good_facts(size_bytes=10**15), NO_LIMITS))


# ---------------------------------------------------------------------------- required metadata


FULL_METADATA = {"run_id": "run-1", "description": "a model", "dataset": {"uri": "s3://data/x"},
                 "signature": {"inputs": ["x"]}}


def test_present_metadata_passes_and_lists_the_fields() -> None:
    rule = ValidationRule(max_size_bytes=None, required_metadata=("signature", "dataset", "description", "run_id"))
    check = checks_by_name(run_checks(ingested(**FULL_METADATA), good_facts(), rule))["required_metadata"]
    assert check.passed is True
    assert check.detail == "present: signature, dataset, description, run_id"


@pytest.mark.parametrize("dropped", ["run_id", "description", "dataset", "signature"])
def test_each_missing_field_is_named(dropped: str) -> None:
    rule = ValidationRule(max_size_bytes=None, required_metadata=("signature", "dataset", "description", "run_id"))
    fields = {k: v for k, v in FULL_METADATA.items() if k != dropped}
    check = checks_by_name(run_checks(ingested(**fields), good_facts(), rule))["required_metadata"]
    assert check.passed is False
    assert check.detail == f"missing: {dropped}"


def test_every_missing_field_is_named_in_the_rules_order() -> None:
    rule = ValidationRule(max_size_bytes=None, required_metadata=("signature", "description", "run_id"))
    check = checks_by_name(run_checks(ingested(run_id="r"), good_facts(), rule))["required_metadata"]
    assert check.detail == "missing: signature, description"


@pytest.mark.parametrize("field,empty", [("description", ""), ("signature", {})])
def test_empty_metadata_counts_as_missing(field: str, empty: Any) -> None:
    rule = ValidationRule(max_size_bytes=None, required_metadata=(field,))
    check = checks_by_name(run_checks(ingested(**{field: empty}), good_facts(), rule))["required_metadata"]
    assert check.passed is False and check.detail == f"missing: {field}"


# ---------------------------------------------------------------------------- allowed formats


@pytest.mark.parametrize("format,passed", [("onnx", True), ("safetensors", True), ("pickle", False),
                                           ("onnx2", False), (None, False)])
def test_the_format_must_be_on_the_allow_list(format: str | None, passed: bool) -> None:
    rule = ValidationRule(max_size_bytes=None, allowed_formats=("onnx", "safetensors"))
    check = checks_by_name(run_checks(ingested(format=format), good_facts(), rule))["allowed_format"]
    assert check.passed is passed
    assert check.detail == f"format {format or 'unknown'}; allowed: onnx, safetensors"


def test_any_format_is_allowed_without_an_allow_list() -> None:
    checks = run_checks(ingested(format=None), good_facts(), ValidationRule(max_size_bytes=None, allowed_formats=None))
    assert "allowed_format" not in names(checks)


# ---------------------------------------------------------------------------- pickle safety


def test_pickle_safety_is_only_checked_when_the_artifact_was_scanned() -> None:
    assert "pickle_safety" not in names(run_checks(ingested(), good_facts(pickle_safe=False), NO_LIMITS))


@pytest.mark.parametrize("safe,passed", [(True, True), (False, False), (None, False)])
def test_a_scanned_artifact_passes_only_when_found_safe(safe: bool | None, passed: bool) -> None:
    facts = good_facts(scanned=True, pickle_safe=safe, pickle_detail="imports os.system")
    check = checks_by_name(run_checks(ingested(format="pickle"), facts, NO_LIMITS))["pickle_safety"]
    assert check.passed is passed
    assert check.detail == "imports os.system"


# ---------------------------------------------------------------------------- rejection reasons


@pytest.mark.parametrize("check,code", sorted(REJECTION_CODES.items()))
def test_each_failed_check_rejects_with_its_code(check: str, code: str) -> None:
    assert rejection_reasons([Check(name=check, passed=False, detail="why")]) == [
        Reason(code=code, message=f"{check}: why")]


def test_rejection_codes_cover_every_check_run_checks_can_produce() -> None:
    assert set(REJECTION_CODES) == {"artifact_present", "checksum", "size_limit", "required_metadata",
                                    "allowed_format", "pickle_safety", "file_limit"}


def test_passed_checks_give_no_reasons() -> None:
    assert rejection_reasons([Check(name="checksum", passed=True, detail="ok")]) == []
    assert rejection_reasons([]) == []


def test_a_failed_check_without_detail_says_failed() -> None:
    assert rejection_reasons([Check(name="pickle_safety", passed=False)]) == [
        Reason(code="unsafe_pickle", message="pickle_safety: failed")]


def test_an_unknown_check_rejects_under_its_own_name() -> None:
    assert rejection_reasons([Check(name="custom_check", passed=False, detail="x")]) == [
        Reason(code="custom_check", message="custom_check: x")]


def test_reasons_follow_the_failed_checks_in_order() -> None:
    rule = ValidationRule(max_size_bytes=10, required_metadata=("run_id",), allowed_formats=("onnx",))
    facts = good_facts(sha256=OTHER_SHA, size_bytes=11, scanned=True, pickle_safe=False, pickle_detail="bad")
    reasons = rejection_reasons(run_checks(ingested(format="pickle"), facts, rule))
    assert [r.code for r in reasons] == ["checksum_mismatch", "too_large", "missing_metadata",
                                         "format_not_allowed", "unsafe_pickle"]
    assert reasons[0].message == f"checksum: expected sha256 {SHA}, found {OTHER_SHA}"


# ---------------------------------------------------------------------------- needs_scan


@pytest.mark.parametrize("format", sorted(PICKLE_FORMATS))
def test_declared_pickle_formats_are_always_scanned(format: str) -> None:
    assert needs_scan(format, b"") is True
    assert needs_scan(format, b"ONNX....") is True


def test_the_pickle_formats_include_the_common_ones() -> None:
    assert {"pickle", "pkl", "joblib", "pt", "pth"} <= PICKLE_FORMATS


@pytest.mark.parametrize("format", ["onnx", "safetensors", "gguf", "keras", "h5"])
def test_formats_whose_structure_is_checked_are_always_scanned(format: str) -> None:
    assert needs_scan(format, b"\x08\x07onnx")


def test_safetensors_gguf_and_hdf5_are_scanned_whatever_format_they_claim() -> None:
    for head in (b"\x40\x00\x00\x00\x00\x00\x00\x00{", b"GGUF\x03\x00", b"\x89HDF\r\n\x1a\n"):
        assert needs_scan(None, head) and needs_scan("tflite", head)


@pytest.mark.parametrize("format", [None, "bin", "tflite"])
@pytest.mark.parametrize("head,scan", [
    (b"\x80\x04\x95\x00", True),      # pickle protocol 2+
    (b"\x80", True),
    (b"PK\x03\x04rest", True),        # zip (torch.save, joblib archives)
    (b"PK\x03", True),                # 'P' is an opcode (PERSID): the scanner decides
    (b"PK\x05\x06", True),            # an empty zip: the scanner decides
    (b"\x08\x07onnx", False),
    (b"", False),
    (b"x\x80", False),                # the marker must be the first byte
])
def test_other_formats_are_scanned_when_their_head_looks_like_a_pickle_or_zip(
        format: str | None, head: bytes, scan: bool) -> None:
    assert needs_scan(format, head) is scan


def test_protocol_0_and_1_pickles_are_scanned_whatever_format_they_claim() -> None:
    """They start with plain ASCII opcodes, not the PROTO byte."""
    import os
    import pickle

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("true",))

    for protocol in (0, 1):
        payload = pickle.dumps(Exploit(), protocol=protocol)
        for declared in (None, "onnx", "safetensors"):
            assert needs_scan(declared, payload[:4096]), (protocol, declared)


@pytest.mark.parametrize("head", [
    b"\x1f\x8b\x08\x00",            # gzip
    b"\x78\x9c\x01\x02",            # zlib (joblib compress=3)
    b"BZh9",                          # bz2
    b"\xfd7zXZ\x00",                  # xz
    b"\x28\xb5\x2f\xfd",            # zstd
    b"\x04\x22\x4d\x18",            # lz4 frame
    b"sys_info".ljust(257, b"\x00") + b"ustar",  # tar (the legacy torch.save layout)
])
def test_compressed_streams_and_archives_are_scanned_whatever_format_they_claim(head: bytes) -> None:
    for declared in (None, "onnx", "safetensors"):
        assert needs_scan(declared, head)


def test_an_artifact_is_labelled_by_name_and_format() -> None:
    assert artifact_label(ingested(format="joblib")) == "m.joblib"
    assert artifact_label(ingested(format=None)) == "m"
