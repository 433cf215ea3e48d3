"""Where an artifact may come from, and its streamed, hashed copy into the registry bucket.

Memory stays bounded whatever the artifact's size: the source is read in parts, each part is
hashed and uploaded (multipart above one part), and at most a few parts are in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from botocore.exceptions import ClientError

from shared.settings import Settings
from shared.storage import PART_SIZE, ObjectStore, S3Location, is_missing

PARTS_IN_FLIGHT = 2


class SourceRefused(Exception):
    """The artifact cannot be taken from where the event says it is; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FileSource:
    path: Path


Source = S3Location | FileSource


def resolve_source(uri: str, settings: Settings) -> Source:
    """Check an artifact URI against the settings' allowed buckets and directories."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
        if not bucket or not key:
            raise SourceRefused("invalid_uri", f"{uri!r} needs a bucket and a key")
        if ".." in key.split("/"):
            raise SourceRefused("path_traversal", f"{uri!r} contains '..'")
        if bucket not in settings.allowed_bucket_names:
            raise SourceRefused("bucket_not_allowed",
                                f"bucket {bucket!r} is not one ingest may read (MODELREG_ALLOWED_BUCKETS)")
        return S3Location(bucket, key)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceRefused("invalid_uri", f"{uri!r} names a remote host")
        raw = unquote(parts.path)
        if ".." in Path(raw).parts:
            raise SourceRefused("path_traversal", f"{uri!r} contains '..'")
        if not settings.artifact_root_paths:
            raise SourceRefused("path_not_allowed",
                                "file:// artifacts are disabled: no MODELREG_ARTIFACT_ROOTS configured")
        resolved = Path(os.path.realpath(raw))
        if not any(resolved.is_relative_to(root) for root in settings.artifact_root_paths):
            code = "symlink_escape" if Path(raw).is_symlink() or resolved != Path(raw) else "path_not_allowed"
            raise SourceRefused(code, f"{uri!r} is not under an allowed artifact directory")
        if not resolved.is_file():
            raise SourceRefused("artifact_missing", f"{uri!r} does not exist or is not a file")
        return FileSource(resolved)
    raise SourceRefused("unsupported_scheme",
                        f"artifact URIs must be s3:// or file://, not {parts.scheme or 'a bare path'!r}")


def registry_key(name: str, version: int, sha256: str) -> str:
    """Content-addressed: the same bytes under the same version always land at the same key."""
    return f"artifacts/{name}/{version}/{sha256}"


@dataclass(frozen=True)
class Copied:
    uri: str
    sha256: str
    size_bytes: int
    already_stored: bool


class ArtifactMismatch(Exception):
    def __init__(self, code: str, message: str, found_sha256: str | None, found_size: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.found_sha256 = found_sha256
        self.found_size = found_size


async def _read_parts(store: ObjectStore, source: Source, limit: int) -> AsyncIterator[bytes]:
    """The source in PART_SIZE pieces; stops once more than `limit` bytes were seen."""
    seen = 0
    buffer = bytearray()
    if isinstance(source, FileSource):
        try:
            handle = open(source.path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise SourceRefused("artifact_unreadable", f"{source.path} cannot be read: {exc.strerror}") from None
        with handle:
            while True:
                try:
                    chunk = await asyncio.to_thread(handle.read, PART_SIZE)
                except OSError as exc:
                    raise SourceRefused("artifact_unreadable", f"{source.path}: {exc.strerror}") from None
                if not chunk:
                    return
                seen += len(chunk)
                yield chunk
                if seen > limit:
                    return
    try:
        async for chunk in store.stream(source):
            buffer += chunk
            seen += len(chunk)
            if len(buffer) >= PART_SIZE:
                yield bytes(buffer)
                buffer.clear()
            if seen > limit:
                break
    except ClientError as exc:
        if is_missing(exc):
            raise SourceRefused("artifact_missing", f"{source.uri} does not exist") from None
        raise
    if buffer:
        yield bytes(buffer)


async def copy_artifact(store: ObjectStore, source: Source, dest_key: str, *,
                        sha256: str, size_bytes: int) -> Copied:
    """Copy `source` to the registry bucket at `dest_key`, hashing on the way.

    Never overwrites: an object already at the content-addressed key is the same artifact.
    A digest or size that differs from the event's leaves nothing behind.
    """
    destination = S3Location(store.bucket, dest_key)
    if size_bytes > PART_SIZE and await store.head(destination) is not None:
        return Copied(destination.uri, sha256, size_bytes, already_stored=True)
    digest = hashlib.sha256()
    size = 0
    upload_id: str | None = None
    parts: list[dict[str, object]] = []
    in_flight: set[asyncio.Task[None]] = set()
    pending: bytes | None = None  # held back: if it is the only part, one PUT stores it
    next_part = 1
    try:
        async for chunk in _read_parts(store, source, size_bytes):
            digest.update(chunk)
            size += len(chunk)
            if size > size_bytes:
                break
            if pending is None:
                pending = chunk
                continue
            if upload_id is None:
                created = await store.client.create_multipart_upload(Bucket=store.bucket, Key=dest_key)
                upload_id = created["UploadId"]
            for body in (pending, chunk) if next_part == 1 else (chunk,):
                if len(in_flight) >= PARTS_IN_FLIGHT:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                in_flight.add(asyncio.create_task(
                    _upload_part(store, dest_key, upload_id, next_part, body, parts)))
                next_part += 1
        if in_flight:
            await asyncio.gather(*in_flight)
            in_flight = set()
        found = digest.hexdigest()
        if size != size_bytes or found != sha256:
            code = "size_mismatch" if size != size_bytes else "checksum_mismatch"
            raise ArtifactMismatch(
                code, f"the artifact has {'more than ' if size > size_bytes else ''}{size} bytes "
                      f"and sha256 {found}; the event said {size_bytes} bytes and {sha256}",
                None if size > size_bytes else found, size)
        if upload_id is None:
            # One request, never an overwrite: the key can only ever hold these bytes.
            if not await store.put_if_absent(destination, pending or b"", found):
                return Copied(destination.uri, sha256, size, already_stored=True)
        else:
            parts.sort(key=lambda p: p["PartNumber"])  # type: ignore[arg-type, return-value]
            await store.client.complete_multipart_upload(
                Bucket=store.bucket, Key=dest_key, UploadId=upload_id, MultipartUpload={"Parts": parts})
            upload_id = None
        return Copied(destination.uri, sha256, size, already_stored=False)
    finally:
        for task in in_flight:
            task.cancel()
        if upload_id is not None:
            try:
                await store.client.abort_multipart_upload(Bucket=store.bucket, Key=dest_key, UploadId=upload_id)
            except Exception:
                pass


async def _upload_part(store: ObjectStore, key: str, upload_id: str, number: int, body: bytes,
                       parts: list[dict[str, object]]) -> None:
    response = await store.client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload_id,
                                              PartNumber=number, Body=body)
    parts.append({"PartNumber": number, "ETag": response["ETag"]})
