"""Where an artifact may come from, and its streamed, hashed copy into the registry bucket.

Memory stays bounded whatever the artifact's size. An S3 object bigger than one part is copied
by the S3 server, which also computes its SHA-256; anything else (a small object, a file) is
read in parts, each part hashed and uploaded (multipart above one part), a few parts in flight.

A directory artifact (an S3 prefix or a file:// directory, named with a trailing '/') is listed
first (paths checked, the policy's file count and total size held), then each file is copied
the same way, a few at a time, under `artifacts/<name>/<version>/<manifest sha256>/<path>`; its
manifest (shared.manifest), whose digest the version's sha256 is, travels on model.ingested and
is stored beside the prefix as `<manifest sha256>.manifest`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from botocore.exceptions import ClientError

from shared.directories import DirectoryRefused, walk
from shared.local_artifacts import LocalSourceRefused, local_artifact_path
from shared.manifest import (
    MAX_MANIFEST_BYTES,
    FileEntry,
    canonical_manifest,
    is_directory_uri,
    limit_problem,
    manifest_digest,
    manifest_key,
    parse_manifest,
    path_problem,
)
from shared.settings import Settings
from shared.storage import PART_SIZE, ObjectStore, S3Location, is_missing

PARTS_IN_FLIGHT = 2
# CopyObject's limit: a bigger S3 object is streamed through ingest in parts instead.
SERVER_COPY_MAX_BYTES = 5 * 1024**3
FILES_IN_FLIGHT = 4  # files of one directory copied at once (each holds at most 3 parts)


class SourceRefused(Exception):
    """The artifact cannot be taken from where the event says it is; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FileSource:
    path: Path


@dataclass(frozen=True)
class S3Prefix:
    """A directory artifact in S3: every object under `prefix` (which ends in '/')."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class FileDirectory:
    """A directory artifact on a file system ingest reads (under MODELREG_ARTIFACT_ROOTS)."""

    path: Path


Source = S3Location | FileSource
DirectorySource = S3Prefix | FileDirectory


def resolve_source(uri: str, settings: Settings) -> Source | DirectorySource:
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
        if is_directory_uri(key):
            return S3Prefix(bucket, key)
        return S3Location(bucket, key)
    if parts.scheme == "file":
        try:
            resolved = local_artifact_path(uri, settings.artifact_root_paths)
        except LocalSourceRefused as exc:
            raise SourceRefused(exc.code, exc.message) from None
        return FileDirectory(resolved) if resolved.is_dir() else FileSource(resolved)
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
    if size_bytes > PART_SIZE and await _stored_already(store, destination, sha256, size_bytes):
        return Copied(destination.uri, sha256, size_bytes, already_stored=True)

    def as_announced(found: str, size: int) -> None:
        if size != size_bytes or found != sha256:
            code = "size_mismatch" if size != size_bytes else "checksum_mismatch"
            raise ArtifactMismatch(
                code, f"the artifact has {'more than ' if size > size_bytes else ''}{size} bytes "
                      f"and sha256 {found}; the event said {size_bytes} bytes and {sha256}",
                None if size > size_bytes else found, size)

    found, size, stored = await _upload(store, source, dest_key, size_bytes, as_announced, expected=size_bytes)
    return Copied(destination.uri, found, size, already_stored=not stored)


async def _stored_already(store: ObjectStore, destination: S3Location, sha256: str, size_bytes: int) -> bool:
    """Whether a redelivery finds the artifact stored. A server copy lands at its key before it
    is checked, and ingest may have stopped in between, so what is there must prove to be the
    announced bytes: by the checksum the server stored with it, else by hashing it (a rare,
    streamed read). Anything else is copied again over it."""
    return await store.known_digest(destination) == (sha256, size_bytes)


async def _upload(store: ObjectStore, source: Source, dest_key: str, limit: int,
                  accept: Callable[[str, int], None], *, expected: int) -> tuple[str, int, bool]:
    """Copy `source` to `dest_key`: (sha256, size, whether this call stored it). `expected` is
    the size the event or the listing gave: an S3 object bigger than one part is copied by the
    S3 server itself (`_copy_in_server`), anything else is streamed through here (one GET and
    one PUT for a small object). `accept(sha256, size)` may raise, which leaves nothing behind."""
    if isinstance(source, S3Location) and PART_SIZE < expected <= SERVER_COPY_MAX_BYTES:
        return await _copy_in_server(store, source, dest_key, limit, accept)
    return await _stream(store, source, dest_key, limit, accept)


async def _copy_in_server(store: ObjectStore, source: S3Location, dest_key: str, limit: int,
                          accept: Callable[[str, int], None]) -> tuple[str, int, bool]:
    """The S3 server copies the object and computes its SHA-256 (CopyObject with a checksum):
    no byte passes through ingest, so its memory stays flat however big the artifact, and the
    copy runs at the server's disk speed. A server that returns no checksum gets its copy
    hashed by streaming it back, still in bounded memory."""
    head = await store.head(source)
    if head is None:
        raise SourceRefused("artifact_missing", f"{source.uri} does not exist")
    size = int(head["ContentLength"])
    if size > limit:
        accept("", size)  # refuses what is bigger than announced, before a byte is copied
    if size > min(limit, SERVER_COPY_MAX_BYTES):
        return await _stream(store, source, dest_key, limit, accept)
    destination = S3Location(store.bucket, dest_key)
    try:
        found = await store.copy_hashed(source, destination, head.get("ETag"))
    except ClientError as exc:
        if is_missing(exc) or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
            raise SourceRefused("artifact_missing",
                                f"{source.uri} was removed or replaced while it was copied") from None
        raise
    try:
        if found is None:
            hashed = await store.digest(destination)
            if hashed is None:
                raise SourceRefused("artifact_missing", f"the copy of {source.uri} vanished")
            found, size = hashed
        accept(found, size)
    except BaseException:
        await _remove(store, [dest_key])
        raise
    return found, size, True


async def _stream(store: ObjectStore, source: Source, dest_key: str, limit: int,
                  accept: Callable[[str, int], None]) -> tuple[str, int, bool]:
    """Stream `source` to `dest_key` in parts, hashing on the way. Reads at most `limit` + 1
    bytes; `accept(sha256, size)` may raise before the object is completed, which then leaves
    nothing behind."""
    digest = hashlib.sha256()
    size = 0
    upload_id: str | None = None
    parts: list[dict[str, object]] = []
    in_flight: set[asyncio.Task[None]] = set()
    pending: bytes | None = None  # held back: if it is the only part, one PUT stores it
    next_part = 1
    try:
        async for chunk in _read_parts(store, source, limit):
            digest.update(chunk)
            size += len(chunk)
            if size > limit:
                break
            if pending is None:
                pending = chunk
                continue
            if upload_id is None:
                created = await (await store.boto()).create_multipart_upload(Bucket=store.bucket, Key=dest_key)
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
        accept(found, size)
        if upload_id is None:
            # One request, never an overwrite: the key can only ever hold these bytes.
            stored = await store.put_if_absent(S3Location(store.bucket, dest_key), pending or b"", found)
            return found, size, stored
        parts.sort(key=lambda p: p["PartNumber"])  # type: ignore[arg-type, return-value]
        await (await store.boto()).complete_multipart_upload(
            Bucket=store.bucket, Key=dest_key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        upload_id = None
        return found, size, True
    finally:
        for task in in_flight:
            task.cancel()
        if upload_id is not None:
            try:
                await (await store.boto()).abort_multipart_upload(Bucket=store.bucket, Key=dest_key, UploadId=upload_id)
            except Exception:
                pass


# ------------------------------------------------------------------------ directory artifacts


@dataclass(frozen=True)
class Listed:
    """One file of a directory artifact, as listed before copying."""

    path: str          # relative to the directory, '/'-separated
    size_bytes: int    # as listed (the copy records what it really read)
    source: Source


@dataclass(frozen=True)
class CopiedDirectory:
    uri: str                     # the registry's prefix, ending in '/'
    sha256: str                  # the manifest's digest
    size_bytes: int
    files: tuple[FileEntry, ...]  # sorted by path
    already_stored: bool = False


async def list_directory(store: ObjectStore, source: DirectorySource, *, max_files: int) -> list[Listed]:
    """Every file of a directory artifact, each path checked; SourceRefused when a path is
    unsafe, a symlink leaves the directory, the directory is empty or holds more than
    `max_files` files (listing stops there)."""
    if isinstance(source, S3Prefix):
        try:
            objects = await store.list_files(S3Location(source.bucket, source.prefix), max_files + 1)
        except ClientError as exc:
            if is_missing(exc):
                raise SourceRefused("artifact_missing", f"{source.uri}: no such bucket") from None
            raise
        listed = [Listed(relative, size, S3Location(source.bucket, source.prefix + relative))
                  for relative, size in objects]
        where = source.uri
    else:
        listed = await asyncio.to_thread(_walk, source.path, max_files)
        where = source.path.as_uri() + "/"
    if len(listed) > max_files:
        raise SourceRefused("too_many_files", f"{where} holds more than {max_files} files "
                                              "(the policy's validation.max_files)")
    for item in listed:
        problem = path_problem(item.path)
        if problem:
            code = "path_traversal" if ".." in item.path.split("/") else "invalid_path"
            raise SourceRefused(code, f"{where}: {problem}")
    if not listed:
        raise SourceRefused("artifact_missing", f"{where} holds no files")
    return listed


def _walk(root: Path, max_files: int) -> list[Listed]:
    try:
        files = walk(root, max_files)
    except DirectoryRefused as refused:
        raise SourceRefused(refused.code, refused.message) from None
    return [Listed(f.path, f.size_bytes, FileSource(f.real)) for f in files]


def check_directory(listed: list[Listed], *, size_bytes: int, max_files: int,
                    max_bytes: int | None) -> None:
    """The policy's limits and the announced total, before anything is copied."""
    total = sum(item.size_bytes for item in listed)
    problem = limit_problem(len(listed), total, max_files=max_files, max_bytes=max_bytes)
    if problem:
        raise SourceRefused(*problem)
    if total != size_bytes:
        raise ArtifactMismatch("size_mismatch", f"the directory's files hold {total} bytes; the event "
                                                f"said {size_bytes}", None, total)


async def copy_directory(store: ObjectStore, listed: list[Listed], dest_prefix: str, *,
                         sha256: str, size_bytes: int) -> CopiedDirectory:
    """Copy every listed file under `dest_prefix` (which ends in '/'), then check the manifest
    of what was read against the event's sha256 and size. A mismatch removes the copies.

    The stored manifest is written last: when it is there (a redelivery), the copy is complete
    and nothing is copied or removed again; when it is not, no recorded version uses the files."""
    done = await _stored_manifest(store, dest_prefix, sha256)
    if done is not None:
        return CopiedDirectory(f"s3://{store.bucket}/{dest_prefix}", sha256, sum(e.size_bytes for e in done),
                               tuple(done), already_stored=True)
    limit = asyncio.Semaphore(FILES_IN_FLIGHT)
    copied: dict[str, FileEntry] = {}
    budget = [size_bytes]  # no file may take the total past the announced size

    def within_budget(found: str, size: int) -> None:
        if size > budget[0]:
            raise ArtifactMismatch("size_mismatch", f"the directory's files hold more than the "
                                                    f"{size_bytes} bytes the event said", None, size)

    async def copy(item: Listed) -> None:
        async with limit:
            found, size, _ = await _upload(store, item.source, dest_prefix + item.path, budget[0], within_budget,
                                           expected=item.size_bytes)
            budget[0] -= size
            copied[item.path] = FileEntry(item.path, size, found)

    try:
        async with asyncio.TaskGroup() as group:
            for item in listed:
                group.create_task(copy(item))
        files = tuple(sorted(copied.values(), key=lambda e: e.path.encode()))
        found_digest = manifest_digest(files)
        total = sum(e.size_bytes for e in files)
        if total != size_bytes or found_digest != sha256:
            code = "size_mismatch" if total != size_bytes else "checksum_mismatch"
            raise ArtifactMismatch(code, f"the directory's manifest has {len(files)} files, {total} bytes and "
                                         f"sha256 {found_digest}; the event said {size_bytes} bytes and {sha256}",
                                   found_digest, total)
        # Beside the files, for readers that do not get model.ingested (the API's downloads).
        await store.put_if_absent(S3Location(store.bucket, manifest_key(dest_prefix)), canonical_manifest(files),
                                  found_digest)
    except BaseException as exc:
        await _remove(store, [dest_prefix + path for path in copied])
        mismatch = _first_mismatch(exc)
        if mismatch is not None:
            raise mismatch from None
        raise
    return CopiedDirectory(f"s3://{store.bucket}/{dest_prefix}", sha256, size_bytes, files)


async def _stored_manifest(store: ObjectStore, dest_prefix: str, sha256: str) -> list[FileEntry] | None:
    """The manifest of a copy completed earlier, if it is there and hashes to `sha256`."""
    try:
        text = await store.read_at_most(S3Location(store.bucket, manifest_key(dest_prefix)), MAX_MANIFEST_BYTES)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    if text is None or hashlib.sha256(text).hexdigest() != sha256:
        return None
    return parse_manifest(text)


def _first_mismatch(exc: BaseException) -> ArtifactMismatch | SourceRefused | None:
    """The refusal a TaskGroup wrapped, if that is what stopped the copy."""
    if isinstance(exc, ArtifactMismatch | SourceRefused):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_mismatch(inner)
            if found is not None:
                return found
    return None


async def _remove(store: ObjectStore, keys: list[str]) -> None:
    for key in keys:
        try:
            await store.delete(S3Location(store.bucket, key))
        except Exception:  # an orphan under a rejected version's prefix is untidy, not wrong
            pass


async def _upload_part(store: ObjectStore, key: str, upload_id: str, number: int, body: bytes,
                       parts: list[dict[str, object]]) -> None:
    response = await (await store.boto()).upload_part(Bucket=store.bucket, Key=key, UploadId=upload_id,
                                              PartNumber=number, Body=body)
    parts.append({"PartNumber": number, "ETag": response["ETag"]})
