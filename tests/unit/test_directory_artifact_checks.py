"""Directory artifacts, the pure parts: what format each file is checked as, what the checks
say about a directory, ingest's walk of a file:// directory and its limits, and the scan of an
MLflow model directory file by file."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from services.ingest.artifacts import (
    ArtifactMismatch,
    FileSource,
    Listed,
    SourceRefused,
    _walk,
    check_directory,
)
from services.validation.logic import (
    ArtifactFacts,
    combine_scans,
    declared_format_problem,
    file_format,
    rejection_reasons,
    run_checks,
    siblings_of,
)
from services.validation.scan import scan_file, scan_stream
from shared.events import ModelIngestedData
from shared.manifest import Discrepancy, FileEntry, compare, manifest_digest
from shared.policy import DEFAULT_RULE, ValidationRule
from tests.directory_models import EVIL_PICKLE, mlflow_sklearn_dir

# ------------------------------------------------------------------------------ file formats


@pytest.mark.parametrize(("declared", "path", "fmt"), [
    (None, "model.pkl", "pickle"),
    ("mlflow", "model.pkl", "pickle"),
    ("onnx", "weights/model.PKL", "pickle"),
    (None, "model.onnx", "onnx"),
    ("pickle", "model.safetensors", "safetensors"),
    (None, "MLmodel", None),
    ("pickle", "MLmodel", None),
    ("pickle", "requirements.txt", None),
    ("pt", "pytorch_model.bin", "pt"),
    (None, "pytorch_model.bin", None),
    ("onnx", "weights.bin", None),
    (None, "model.joblib", "joblib"),
    (None, "x.keras", "keras"),
])
def test_each_file_is_checked_as_its_suffix_says(declared: str | None, path: str, fmt: str | None) -> None:
    assert file_format(declared, path) == fmt


@pytest.mark.parametrize(("declared", "paths", "problem"), [
    ("pickle", ["MLmodel", "model.pkl"], False),
    ("joblib", ["model.pkl"], False),           # one pickle family
    ("pickle", ["MLmodel", "conda.yaml"], True),
    ("onnx", ["model.onnx", "weights.bin"], False),
    ("onnx", ["model.pkl"], True),
    ("keras", ["model.h5"], False),
    ("mlflow", ["MLmodel"], False),             # a format the scanner does not know claims nothing
    (None, ["anything"], False),
])
def test_a_declared_format_needs_a_file_of_it(declared: str, paths: list[str], problem: bool) -> None:
    found = declared_format_problem(declared, paths)
    assert (found is not None) == problem
    if problem:
        assert f"declared {declared}" in found


def test_siblings_are_relative_to_the_files_folder() -> None:
    paths = ["model.onnx", "data/w.bin", "sub/model.onnx", "sub/w.bin"]
    assert siblings_of("sub/model.onnx", paths) == {"w.bin"}
    assert siblings_of("model.onnx", paths) == {"data/w.bin", "sub/model.onnx", "sub/w.bin"}


def test_combined_scans_name_each_unsafe_file() -> None:
    clean = scan_stream(io.BytesIO(b"\x80\x04N."), declared_format="pickle", label="a.pkl")
    evil = scan_stream(io.BytesIO(EVIL_PICKLE), declared_format="pickle", label="sub/evil.pkl")
    scanned, safe, detail = combine_scans({"a.pkl": clean, "sub/evil.pkl": evil}, None)
    assert scanned and not safe
    assert detail == "disallowed import posix.system in sub/evil.pkl"


def test_combined_scans_of_clean_files_count_them() -> None:
    clean = scan_stream(io.BytesIO(b"\x80\x04N."), declared_format="pickle", label="a.pkl")
    assert combine_scans({"a.pkl": clean}, None) == (True, True, "1 of 1 files scanned, 0 distinct imports, "
                                                                  "all allowed")


def test_a_declared_format_problem_fails_the_scan_even_when_every_file_is_clean() -> None:
    scanned, safe, detail = combine_scans({}, "declared pickle but no file of the directory is one (no .pkl file)")
    assert scanned and not safe and "declared pickle" in detail


def test_combined_detail_stays_within_the_contract() -> None:
    evil = scan_stream(io.BytesIO(EVIL_PICKLE), declared_format="pickle", label="x" * 500)
    _, _, detail = combine_scans({f"{i}": evil for i in range(200)}, None)
    assert len(detail) <= 10_000 and "more unsafe files" in detail


# ------------------------------------------------------------------------------ directory checks


def entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path, len(data), hashlib.sha256(data).hexdigest())


FILES = [entry("MLmodel", b"flavors: {}\n"), entry("model.pkl", b"\x80\x04N."), entry("conda.yaml", b"x: 1\n")]


def ingested_dir(entries: list[FileEntry] = FILES, fmt: str | None = "pickle") -> ModelIngestedData:
    ordered = sorted(entries, key=lambda e: e.path.encode())
    return ModelIngestedData.model_validate({"name": "m", "version": 1, "artifact": {
        "uri": "s3://modelreg/artifacts/m/1/d/", "sha256": manifest_digest(ordered),
        "size_bytes": sum(e.size_bytes for e in ordered), "format": fmt,
        "files": [{"path": e.path, "size_bytes": e.size_bytes, "sha256": e.sha256} for e in ordered]}})


def facts(problems: list[Discrepancy], **fields: Any) -> ArtifactFacts:
    return ArtifactFacts(present=not any(p.kind == "missing" for p in problems), discrepancies=tuple(problems),
                         **fields)


def test_an_intact_directory_passes_presence_checksum_and_limits() -> None:
    checks = {c.name: c for c in run_checks(ingested_dir(), facts([]), DEFAULT_RULE.validation)}
    assert [n for n, c in checks.items() if not c.passed] == []
    assert set(checks) >= {"artifact_present", "checksum", "size_limit", "file_limit"}
    assert "all 3 files present" in checks["artifact_present"].detail


def test_a_changed_missing_and_extra_file_are_each_named() -> None:
    found = {"MLmodel": (FILES[0].sha256, FILES[0].size_bytes), "model.pkl": ("0" * 64, 4), "conda.yaml": None}
    problems = compare(FILES, found, extra=["evil.pkl"])
    checks = {c.name: c for c in run_checks(ingested_dir(), facts(problems), DEFAULT_RULE.validation)}
    assert not checks["artifact_present"].passed and "conda.yaml: missing" in checks["artifact_present"].detail
    assert not checks["checksum"].passed
    assert "model.pkl: changed" in checks["checksum"].detail
    assert "evil.pkl: not in the manifest" in checks["checksum"].detail
    codes = [r.code for r in rejection_reasons(list(checks.values()))]
    assert codes == ["artifact_missing", "checksum_mismatch"]


def test_a_directory_over_the_policy_limits_is_rejected() -> None:
    rule = ValidationRule(max_size_bytes=10, max_files=2)
    reasons = rejection_reasons(run_checks(ingested_dir(), facts([]), rule))
    assert [r.code for r in reasons] == ["too_large", "too_many_files"]
    assert "3 files; the limit is 2" in reasons[1].message


def test_an_unsafe_file_rejects_the_directory_with_its_name() -> None:
    reasons = rejection_reasons(run_checks(
        ingested_dir(), facts([], scanned=True, pickle_safe=False,
                              pickle_detail="disallowed import posix.system in model.pkl"),
        DEFAULT_RULE.validation))
    assert [(r.code, r.message) for r in reasons] == [
        ("unsafe_pickle", "pickle_safety: disallowed import posix.system in model.pkl")]


# ------------------------------------------------------------------------------ ingest: the walk


def make(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def test_the_walk_lists_every_regular_file(tmp_path: Path) -> None:
    root = make(tmp_path / "m", {"MLmodel": b"a", "sub/model.pkl": b"bb", "sub/deeper/x.txt": b""})
    listed = _walk(root, 10)
    assert sorted((item.path, item.size_bytes) for item in listed) == [
        ("MLmodel", 1), ("sub/deeper/x.txt", 0), ("sub/model.pkl", 2)]
    assert all(isinstance(item.source, FileSource) and item.source.path.is_file() for item in listed)


def test_a_symlink_to_a_file_inside_is_taken_as_that_file(tmp_path: Path) -> None:
    root = make(tmp_path / "m", {"real.pkl": b"x"})
    (root / "alias.pkl").symlink_to(root / "real.pkl")
    assert sorted(item.path for item in _walk(root, 10)) == ["alias.pkl", "real.pkl"]


def test_a_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    make(tmp_path, {"secret": b"s"})
    root = make(tmp_path / "m", {"a": b"x"})
    (root / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(SourceRefused) as caught:
        _walk(root, 10)
    assert caught.value.code == "symlink_escape" and "leak" in caught.value.message


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    root = make(tmp_path / "m", {"a": b"x"})
    (root / "loop").symlink_to(root)
    with pytest.raises(SourceRefused) as caught:
        _walk(root, 10)
    assert "loop" in caught.value.message


def test_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    root = make(tmp_path / "m", {"a": b"x"})
    os.mkfifo(root / "pipe")
    with pytest.raises(SourceRefused) as caught:
        _walk(root, 10)
    assert "pipe: not a regular file" in caught.value.message


def test_the_walk_stops_one_past_the_limit(tmp_path: Path) -> None:
    root = make(tmp_path / "m", {f"f{i}": b"" for i in range(50)})
    assert len(_walk(root, 5)) == 6


def listed(*sizes: int) -> list[Listed]:
    return [Listed(f"f{i}", size, FileSource(Path(f"/x/f{i}"))) for i, size in enumerate(sizes)]


def test_check_directory_holds_the_limits_and_the_announced_total() -> None:
    check_directory(listed(1, 2), size_bytes=3, max_files=2, max_bytes=3)
    with pytest.raises(SourceRefused) as caught:
        check_directory(listed(1, 2, 3), size_bytes=6, max_files=2, max_bytes=None)
    assert caught.value.code == "too_many_files"
    with pytest.raises(SourceRefused) as caught:
        check_directory(listed(1, 2), size_bytes=3, max_files=5, max_bytes=2)
    assert caught.value.code == "too_large"
    with pytest.raises(ArtifactMismatch) as mismatch:
        check_directory(listed(1, 2), size_bytes=4, max_files=5, max_bytes=None)
    assert mismatch.value.code == "size_mismatch"


# ------------------------------------------------------------------------------ MLflow directories


def scan_directory(root: Path, declared: str | None) -> tuple[bool, bool, str]:
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    scans = {path: scan_file(root / path, declared_format=file_format(declared, path), label=path,
                             siblings=siblings_of(path, paths)) for path in paths}
    return combine_scans(scans, declared_format_problem(declared, paths))


@pytest.mark.parametrize("declared", [None, "pickle", "mlflow", "sklearn"])
def test_a_clean_mlflow_sklearn_directory_passes_the_scan(tmp_path: Path, declared: str | None) -> None:
    root = mlflow_sklearn_dir(tmp_path / "model")
    assert sorted(p.name for p in root.iterdir()) == ["MLmodel", "conda.yaml", "model.pkl", "python_env.yaml",
                                                      "requirements.txt"]
    scanned, safe, detail = scan_directory(root, declared)
    assert scanned and safe, detail


def test_an_mlflow_directory_with_a_malicious_pickle_is_refused_naming_it(tmp_path: Path) -> None:
    root = mlflow_sklearn_dir(tmp_path / "model", pickle_bytes=EVIL_PICKLE)
    scanned, safe, detail = scan_directory(root, "mlflow")
    assert not safe and detail == "disallowed import posix.system in model.pkl"


def test_a_pickle_hidden_under_a_text_name_is_still_found(tmp_path: Path) -> None:
    root = mlflow_sklearn_dir(tmp_path / "model")
    (root / "requirements.txt").write_bytes(EVIL_PICKLE)
    _, safe, detail = scan_directory(root, "mlflow")
    assert not safe and "requirements.txt" in detail
