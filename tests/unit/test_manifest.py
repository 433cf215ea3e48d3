"""Directory artifacts' manifest: paths, canonical form, digest, limits, comparison, and the
contract's ArtifactRef.files."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.events import ArtifactRef, ManifestFile
from shared.manifest import (
    MAX_MANIFEST_FILES,
    MAX_PATH_BYTES,
    Discrepancy,
    FileEntry,
    canonical_manifest,
    compare,
    describe,
    is_directory_uri,
    limit_problem,
    manifest_digest,
    parse_manifest,
    path_problem,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path, len(data), sha(data))


FILES = {"MLmodel": b"flavors: {}\n", "model.pkl": b"\x80\x04N.", "sub/conda.yaml": b"name: x\n",
         "b": b"", "sub dir/\u00e9t\u00e9.txt": b"summer"}


# ------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("path", ["model.pkl", "MLmodel", "a/b/c.txt", "sub dir/\u00e9t\u00e9.txt", "x" * 255,
                                  "/".join(["y" * 100] * 5), ".hidden", "a..b", "...", "-", "a b/ c"])
def test_ordinary_relative_paths_are_fine(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(("path", "said"), [
    ("", "empty path"),
    ("../etc/passwd", "path traversal"),
    ("a/../../b", "path traversal"),
    ("..", "path traversal"),
    ("/etc/passwd", "absolute"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("./a", "'.' segment"),
    ("a/./b", "'.' segment"),
    ("a\\b", "backslash"),
    ("..\\..\\x", "backslash"),
    ("a\nb", "non-printable"),
    ("a\x00b", "non-printable"),
    ("a\tb", "non-printable"),
    ("a\x1b[31m", "non-printable"),
    ("x" * 256, "segment longer than 255"),
    ("/".join(["y" * 200] * 3), f"longer than {MAX_PATH_BYTES}"),
    ("\udcff", "not UTF-8"),
])
def test_unsafe_paths_are_named(path: str, said: str) -> None:
    problem = path_problem(path)
    assert problem is not None and said in problem


def test_a_path_of_exactly_the_limit_passes_and_one_byte_more_fails() -> None:
    at_limit = "/".join(["y" * 127] * 4)  # 4 * 127 + 3 = 511
    assert path_problem(at_limit + "z") is None
    assert path_problem(at_limit + "zz") is not None


# ------------------------------------------------------------------------------ canonical form


def test_the_canonical_manifest_is_sorted_lines_of_digest_size_and_path() -> None:
    entries = [entry(p, d) for p, d in FILES.items()]
    text = canonical_manifest(entries).decode()
    lines = text.splitlines()
    assert [line.split("  ", 2)[2] for line in lines] == sorted(FILES, key=str.encode)
    assert lines[0] == f"{sha(FILES['MLmodel'])}  {len(FILES['MLmodel'])}  MLmodel"
    assert text.endswith("\n")
    assert manifest_digest(entries) == sha(text.encode())


def test_order_of_input_does_not_matter() -> None:
    entries = [entry(p, d) for p, d in FILES.items()]
    assert manifest_digest(entries) == manifest_digest(list(reversed(entries)))


def test_sorting_is_by_utf8_bytes_not_by_locale() -> None:
    entries = [entry("a", b"1"), entry("B", b"2"), entry("\u00e9", b"3"), entry("a/b", b"4"), entry("a-b", b"5")]
    paths = [line.split("  ", 2)[2] for line in canonical_manifest(entries).decode().splitlines()]
    assert paths == ["B", "a", "a-b", "a/b", "\u00e9"]


@pytest.mark.parametrize("change", ["content", "path", "extra", "missing"])
def test_any_change_changes_the_digest(change: str) -> None:
    entries = [entry(p, d) for p, d in FILES.items()]
    before = manifest_digest(entries)
    if change == "content":
        entries[1] = entry("model.pkl", b"\x80\x04K\x01.")
    elif change == "path":
        entries[1] = FileEntry("model2.pkl", entries[1].size_bytes, entries[1].sha256)
    elif change == "extra":
        entries.append(entry("extra.bin", b""))
    else:
        entries.pop()
    assert manifest_digest(entries) != before


@pytest.mark.parametrize(("bad", "said"), [
    ([FileEntry("a", 1, "0" * 64), FileEntry("a", 1, "0" * 64)], "twice"),
    ([FileEntry("../a", 1, "0" * 64)], "traversal"),
    ([FileEntry("a", 1, "A" * 64)], "hex"),
    ([FileEntry("a", -1, "0" * 64)], "negative"),
])
def test_a_bad_entry_has_no_canonical_form(bad: list[FileEntry], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        canonical_manifest(bad)


def test_the_documented_recipe_matches(tmp_path: Path) -> None:
    """The formula a pipeline follows (README, the contract), written out independently."""
    for relative, data in FILES.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    files = sorted((p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()), key=str.encode)
    manifest = "".join(f"{hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()}  "
                       f"{(tmp_path / f).stat().st_size}  {f}\n" for f in files)
    expected = hashlib.sha256(manifest.encode()).hexdigest()
    assert manifest_digest(entry(p, d) for p, d in FILES.items()) == expected


def test_the_shell_recipe_matches(tmp_path: Path) -> None:
    files = {k: v for k, v in FILES.items() if " " not in k}
    for relative, data in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    script = ("cd \"$1\" && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | while read -r f; do "
              "printf '%s  %s  %s\\n' \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" \"$(stat -c%s \"$f\")\" \"$f\"; "
              "done | sha256sum | cut -d' ' -f1")
    out = subprocess.run(["bash", "-c", script, "_", str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == manifest_digest(entry(p, d) for p, d in files.items())


def test_parse_gives_back_the_entries() -> None:
    entries = [entry(p, d) for p, d in FILES.items()]
    assert parse_manifest(canonical_manifest(entries)) == sorted(entries, key=lambda e: e.path.encode())


@pytest.mark.parametrize("text", [
    "x  1  a\n",                                      # not a digest
    f"{'0' * 64}  1  b\n{'0' * 64}  1  a\n",          # unsorted
    f"{'0' * 64}  1  a",                              # no final newline
    f"{'0' * 64} 1 a\n",                              # one space
    f"{'0' * 64}  -1  a\n",                           # not a size
])
def test_parse_refuses_what_is_not_canonical(text: str) -> None:
    with pytest.raises(ValueError):
        parse_manifest(text)


# ------------------------------------------------------------------------------ limits


def test_limits() -> None:
    assert limit_problem(3, 100, max_files=3, max_bytes=100) is None
    assert limit_problem(4, 100, max_files=3, max_bytes=100)[0] == "too_many_files"
    assert limit_problem(3, 101, max_files=3, max_bytes=100)[0] == "too_large"
    assert limit_problem(3, 10**15, max_files=3, max_bytes=None) is None
    assert limit_problem(MAX_MANIFEST_FILES + 1, 0, max_files=None, max_bytes=None)[0] == "too_many_files"
    code, message = limit_problem(4, 1, max_files=3, max_bytes=None)
    assert "more than 3 files" in message and "max_files" in message


# ------------------------------------------------------------------------------ comparison


def test_compare_names_changed_missing_and_extra_files() -> None:
    expected = [entry("a", b"1"), entry("b", b"2"), entry("c", b"3")]
    found = {"a": (sha(b"1"), 1), "b": (sha(b"X"), 1), "c": None}
    problems = compare(expected, found, extra=["a", "d"])
    assert [(p.path, p.kind) for p in problems] == [("b", "changed"), ("c", "missing"), ("d", "extra")]
    assert "b: changed" in describe(problems) and "d: not in the manifest" in describe(problems)


def test_compare_a_size_change_alone_is_a_change() -> None:
    expected = [entry("a", b"1")]
    assert compare(expected, {"a": (sha(b"1"), 2)})[0].kind == "changed"


def test_compare_nothing_differs() -> None:
    expected = [entry("a", b"1")]
    assert compare(expected, {"a": (sha(b"1"), 1)}, extra=["a"]) == []


def test_describe_is_bounded() -> None:
    problems = [Discrepancy(f"f{i}", "missing", "missing") for i in range(30)]
    text = describe(problems)
    assert "f9: missing" in text and "f10" not in text and "and 20 more" in text


def test_directory_uris_end_in_a_slash() -> None:
    assert is_directory_uri("s3://b/p/") and is_directory_uri("file:///d/")
    assert not is_directory_uri("s3://b/p") and not is_directory_uri("file:///d/model.pkl")


# ------------------------------------------------------------------------------ the contract


def ref(entries: list[FileEntry], **changes: object) -> ArtifactRef:
    fields: dict[str, object] = dict(
        uri="s3://modelreg/artifacts/m/1/x/", sha256=manifest_digest(entries),
        size_bytes=sum(f.size_bytes for f in entries),
        files=[ManifestFile(path=f.path, size_bytes=f.size_bytes, sha256=f.sha256)
               for f in sorted(entries, key=lambda e: e.path.encode())])
    fields.update(changes)
    return ArtifactRef(**fields)


def test_an_artifact_ref_carries_its_manifest() -> None:
    files = [entry(p, d) for p, d in FILES.items()]
    artifact = ref(files)
    assert artifact.manifest() == sorted(files, key=lambda e: e.path.encode())
    assert ArtifactRef.model_validate_json(artifact.model_dump_json()) == artifact


@pytest.mark.parametrize("change", ["digest", "size", "unsorted", "single file uri", "no files", "bad path"])
def test_an_artifact_ref_whose_manifest_does_not_hold_is_refused(change: str) -> None:
    files = [entry(p, d) for p, d in FILES.items()]
    good = ref(files)
    listed = list(good.files or [])
    changes: dict[str, object] = {
        "digest": {"sha256": "0" * 64},
        "size": {"size_bytes": 1},
        "unsorted": {"files": list(reversed(listed))},
        "single file uri": {"uri": "s3://modelreg/artifacts/m/1/x"},
        "no files": {"files": None},
    }.get(change, {})
    with pytest.raises(ValidationError):
        if change == "bad path":
            ManifestFile(path="../x", size_bytes=1, sha256="0" * 64)
        else:
            ref(files, **changes)


def test_a_single_file_ref_has_no_files() -> None:
    assert ArtifactRef(uri="s3://b/k", sha256="0" * 64).manifest() is None
