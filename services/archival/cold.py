"""Cold storage: an archived artifact moves under `archive/`, tagged, in a colder class where
the S3 server has one. Idempotent: a move that already happened is found and not redone.

A directory artifact (a URI ending in '/') moves object by object, its stored manifest
(`<prefix>.manifest`) with it; a move cut short is finished by the next attempt, since only
what is still at the source is copied and each object is deleted only once it is copied."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from botocore.exceptions import ClientError

from shared.manifest import MAX_MANIFEST_FILES, is_directory_uri, manifest_key
from shared.storage import ObjectStore, S3Location, parse_s3_uri

ARCHIVE_PREFIX = "archive/"
COLD_STORAGE_CLASS = "GLACIER_IR"
TAGGING = "modelreg-stage=archived"


def archive_location(uri: str) -> S3Location:
    source = parse_s3_uri(uri)
    return S3Location(source.bucket, ARCHIVE_PREFIX + source.key)


async def move_to_cold(store: ObjectStore, uri: str) -> str | None:
    """Move the artifact; returns the archive URI, or None when there was nothing to move."""
    source = parse_s3_uri(uri)
    target = archive_location(uri)
    if is_directory_uri(uri):
        return await _move_directory(store, source, target, _to_cold)
    if await store.head(source) is None:
        return target.uri if await store.head(target) is not None else None
    await _to_cold(store, source, target)
    return target.uri


async def _objects(store: ObjectStore, prefix: S3Location) -> list[S3Location]:
    """A directory artifact's objects, its stored manifest included."""
    found = await store.list_prefix(prefix.bucket, prefix.key, MAX_MANIFEST_FILES + 1)
    objects = [S3Location(prefix.bucket, key) for key, _ in found]
    manifest = S3Location(prefix.bucket, manifest_key(prefix.key))
    if await store.head(manifest) is not None:
        objects.append(manifest)
    return objects


Move = Callable[[ObjectStore, S3Location, S3Location], Awaitable[None]]


async def _move_directory(store: ObjectStore, source: S3Location, target: S3Location, move: Move) -> str | None:
    objects = await _objects(store, source)
    if not objects:
        return target.uri if await _objects(store, target) else None
    for location in objects:
        inside = location.key.startswith(source.key)  # else: the manifest beside the prefix
        destination = target.key + location.key[len(source.key):] if inside else manifest_key(target.key)
        await move(store, location, S3Location(target.bucket, destination))
    return target.uri


async def _to_cold(store: ObjectStore, source: S3Location, target: S3Location) -> None:
    # store.copy: over 5 GiB, a multipart copy (one CopyObject cannot take it).
    try:
        await store.copy(source, target, tagging=TAGGING, storage_class=COLD_STORAGE_CLASS)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("InvalidStorageClass", "NotImplemented"):
            raise
        await store.copy(source, target, tagging=TAGGING)  # a server without cold classes: prefix and tag only
    await store.delete(source)


async def move_from_cold(store: ObjectStore, uri: str) -> None:
    """Bring an archived artifact back to `uri`, where it was before archiving, in the default
    storage class and untagged. Idempotent like the move out: a restore that already happened
    is found and not redone (the archive copy is deleted only once the artifact is back)."""
    source = archive_location(uri)
    target = parse_s3_uri(uri)
    if is_directory_uri(uri):
        if await _move_directory(store, source, target, _from_cold) is None:
            raise FileNotFoundError(f"neither {uri} nor its archive copy {source.uri} exists")
        return
    if await store.head(source) is None:
        if await store.head(target) is None:
            raise FileNotFoundError(f"neither {uri} nor its archive copy {source.uri} exists")
        return
    await _from_cold(store, source, target)


async def _from_cold(store: ObjectStore, source: S3Location, target: S3Location) -> None:
    await store.copy(source, target, tagging="")  # untagged, the default storage class
    await store.delete(source)
