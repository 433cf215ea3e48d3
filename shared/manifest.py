"""Directory artifacts: the manifest of their files, its canonical form and digest, path checks
and limits. Plain functions over plain data, shared by ingest, validation, promotion, the SDK.

A directory artifact (an MLflow model, a Hugging Face folder, a SavedModel) is identified by
the digest of its canonical manifest, which any pipeline can compute (MANIFEST_DIGEST_RULE).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The contract's bound: the manifest travels on `model.ingested` (at most 1 MiB), so at most
# this many files of at most MAX_PATH_BYTES each (about 600 KiB at the worst).
MAX_MANIFEST_FILES = 1000
MAX_PATH_BYTES = 512
MAX_SEGMENT_BYTES = 255

MANIFEST_DIGEST_RULE = (
    "For a directory artifact (a URI ending in '/'), sha256 is the SHA-256 (lower-case hex) of its "
    "canonical manifest: one line per file, `<sha256 of the file, lower-case hex>  <size in bytes, "
    "decimal>  <path relative to the directory, '/'-separated>\\n` (two spaces between fields), "
    "lines sorted by the path's UTF-8 bytes, encoded as UTF-8; size_bytes is the files' total. "
    "Paths: at most 512 bytes of printable UTF-8, segments of at most 255 bytes, no empty, '.' or "
    "'..' segment, no leading '/', no backslash. For a single file, sha256 is the file's own digest.")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of a directory artifact."""

    path: str
    size_bytes: int
    sha256: str


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside an artifact directory; None when it can."""
    if not path:
        return "an empty path"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return f"{path.encode('utf-8', 'backslashreplace').decode()!r} is not UTF-8"
    shown = repr(path[:80] + ("..." if len(path) > 80 else ""))
    if len(encoded) > MAX_PATH_BYTES:
        return f"{shown} is longer than {MAX_PATH_BYTES} bytes"
    if not path.isprintable():
        return f"{shown} holds control or non-printable characters"
    if "\\" in path:
        return f"{shown} holds a backslash"
    if path.startswith("/"):
        return f"{shown} is absolute"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return f"{shown} has {'an empty' if not segment else repr(segment)} segment" + (
                " (path traversal)" if segment == ".." else "")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            return f"{shown} has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def _sort_key(entry: FileEntry) -> bytes:
    return entry.path.encode()


def sorted_entries(entries: Iterable[FileEntry]) -> list[FileEntry]:
    """The entries in canonical order; ValueError on a bad path, digest, size or a duplicate."""
    ordered = sorted(entries, key=_sort_key)
    for before, entry in zip([None, *ordered], ordered, strict=False):
        problem = path_problem(entry.path)
        if problem:
            raise ValueError(problem)
        if not _SHA256.match(entry.sha256):
            raise ValueError(f"{entry.path!r}: sha256 must be 64 lower-case hex digits")
        if entry.size_bytes < 0:
            raise ValueError(f"{entry.path!r}: a negative size")
        if before is not None and before.path == entry.path:
            raise ValueError(f"{entry.path!r} is listed twice")
    return ordered


def canonical_manifest(entries: Iterable[FileEntry]) -> bytes:
    """The manifest's canonical bytes (MANIFEST_DIGEST_RULE)."""
    return "".join(f"{e.sha256}  {e.size_bytes}  {e.path}\n" for e in sorted_entries(entries)).encode()


def manifest_digest(entries: Iterable[FileEntry]) -> str:
    """The directory artifact's sha256: the digest of its canonical manifest."""
    return hashlib.sha256(canonical_manifest(entries)).hexdigest()


def parse_manifest(text: bytes | str) -> list[FileEntry]:
    """The entries of a canonical manifest (as stored); ValueError if it is not canonical."""
    raw = text.decode() if isinstance(text, bytes) else text
    entries = []
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        sha, sep1, rest = line.partition("  ")
        size, sep2, path = rest.partition("  ")
        if not (sep1 and sep2 and line.endswith("\n") and size.isdigit()):
            raise ValueError(f"manifest line {number} is not '<sha256>  <size>  <path>'")
        entries.append(FileEntry(path=path[:-1], size_bytes=int(size), sha256=sha))
    if canonical_manifest(entries).decode() != raw:
        raise ValueError("the manifest is not in canonical form")
    return entries


def limit_problem(file_count: int, total_bytes: int, *, max_files: int | None,
                  max_bytes: int | None) -> tuple[str, str] | None:
    """(code, message) when a directory breaks the policy's limits; None when it keeps them."""
    if max_files is not None and file_count > max_files:
        return "too_many_files", f"the directory holds more than {max_files} files (the policy's max_files)"
    if file_count > MAX_MANIFEST_FILES:
        return "too_many_files", f"the directory holds more than {MAX_MANIFEST_FILES} files (the contract's limit)"
    if max_bytes is not None and total_bytes > max_bytes:
        return "too_large", (f"the directory's files hold {total_bytes} bytes; the policy's "
                             f"max_size_bytes is {max_bytes}")
    return None


@dataclass(frozen=True)
class Discrepancy:
    """A file that differs from the manifest: changed, missing, or extra (not in it)."""

    path: str
    kind: str  # "changed" | "missing" | "extra"
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def compare(expected: Sequence[FileEntry], found: Mapping[str, tuple[str, int] | None],
            extra: Iterable[str] = ()) -> list[Discrepancy]:
    """Each file of the manifest against what was read (`found[path]` = (sha256, size), or None
    when missing), plus files present but not in the manifest; sorted by path."""
    problems = []
    for entry in expected:
        seen = found.get(entry.path)
        if seen is None:
            problems.append(Discrepancy(entry.path, "missing", "missing"))
        elif seen != (entry.sha256, entry.size_bytes):
            problems.append(Discrepancy(entry.path, "changed",
                                        f"changed: sha256 {seen[0]} ({seen[1]} bytes), the manifest says "
                                        f"{entry.sha256} ({entry.size_bytes} bytes)"))
    listed = {e.path for e in expected}
    problems += [Discrepancy(path, "extra", "not in the manifest") for path in set(extra) if path not in listed]
    return sorted(problems, key=lambda d: d.path.encode())


def describe(problems: Sequence[Discrepancy], shown: int = 10) -> str:
    """Readable, bounded: the first `shown` discrepancies and how many more."""
    text = "; ".join(str(p) for p in problems[:shown])
    return text + (f"; and {len(problems) - shown} more" if len(problems) > shown else "")


def manifest_key(prefix: str) -> str:
    """Where the registry keeps a directory's canonical manifest: beside the prefix, never in
    it (`artifacts/m/3/<sha256>/` -> `artifacts/m/3/<sha256>.manifest`). It needs no trust of its
    own: its SHA-256 is the version's sha256."""
    return prefix.rstrip("/") + ".manifest"


MAX_MANIFEST_BYTES = MAX_MANIFEST_FILES * (64 + 2 + 20 + 2 + MAX_PATH_BYTES + 1)


def is_directory_uri(uri: str) -> bool:
    """Directory artifacts are named by a URI ending in '/' (an S3 prefix, a file:// directory)."""
    return uri.endswith("/")
