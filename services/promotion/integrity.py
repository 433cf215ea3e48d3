"""The integrity check before any move to production: the stored artifact still is what was
registered. A single file must hash to the version's sha256; a directory's files must each
match its manifest (shared.manifest), and no file may have appeared beside them.

An object the S3 server keeps a full-object SHA-256 with (ingest's server-side copies) is
checked by that checksum, one HEAD, instead of being read again: the server computed it from
the bytes it wrote, and any later write replaces it with the new bytes' checksum or none."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shared.events import QuarantinedEvidence
from shared.manifest import (
    compare,
    describe,
    is_directory_uri,
    manifest_digest,
    parse_manifest,
)
from shared.storage import ObjectStore, S3Location, parse_s3_uri

FILES_IN_FLIGHT = 4
EXTRA_LISTED = 100


@dataclass(frozen=True)
class Verdict:
    intact: bool
    message: str = ""
    evidence: QuarantinedEvidence = field(default_factory=QuarantinedEvidence)


async def verify_artifact(store: ObjectStore, uri: str, sha256: str, manifest: str | None) -> Verdict:
    """Hold the stored artifact (its server checksum, else its bytes streamed) to the record."""
    try:
        location = parse_s3_uri(uri)
    except ValueError:
        return Verdict(False, f"stored artifact {uri} is not an s3:// URI",
                       QuarantinedEvidence(expected_sha256=sha256, found_sha256=None, artifact_uri=uri))
    if not is_directory_uri(uri):
        found = await store.known_digest(location)
        found_sha = found[0] if found else None
        if found_sha == sha256:
            return Verdict(True)
        return Verdict(False, f"stored artifact {uri} hashes to {found_sha or 'nothing (missing)'}; "
                              f"expected {sha256}",
                       QuarantinedEvidence(expected_sha256=sha256, found_sha256=found_sha, artifact_uri=uri))
    return await _verify_directory(store, location, sha256, manifest)


async def _verify_directory(store: ObjectStore, prefix: S3Location, sha256: str,
                            manifest: str | None) -> Verdict:
    manifest_error = None
    try:
        entries = parse_manifest(manifest) if manifest is not None else None
    except ValueError as exc:
        entries, manifest_error = None, str(exc)
    if entries is None or manifest_digest(entries) != sha256:
        evidence = QuarantinedEvidence(expected_sha256=sha256, artifact_uri=prefix.uri)
        if manifest_error is not None:
            evidence = QuarantinedEvidence(expected_sha256=sha256, artifact_uri=prefix.uri,
                                           manifest_error=manifest_error)
        return Verdict(False, f"stored artifact {prefix.uri}: the recorded manifest does not hash to {sha256}",
                       evidence)
    limit = asyncio.Semaphore(FILES_IN_FLIGHT)
    found: dict[str, tuple[str, int] | None] = {}

    async def digest(path: str) -> None:
        async with limit:
            found[path] = await store.known_digest(S3Location(prefix.bucket, prefix.key + path))

    async with asyncio.TaskGroup() as group:
        for entry in entries:
            group.create_task(digest(entry.path))
    extra = [path for path, _ in await store.list_files(prefix, len(entries) + EXTRA_LISTED)]
    problems = compare(entries, found, extra)
    if not problems:
        return Verdict(True)
    evidence = QuarantinedEvidence(expected_sha256=sha256, artifact_uri=prefix.uri, found_sha256=None,
                                   files=[{"path": p.path, "problem": p.kind} for p in problems[:50]])
    return Verdict(False, f"stored artifact {prefix.uri} differs from its manifest: {describe(problems)}", evidence)
