"""Cold storage: an archived artifact moves under `archive/`, tagged, in a colder class where
the S3 server has one. Idempotent: a move that already happened is found and not redone."""

from __future__ import annotations

from botocore.exceptions import ClientError

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
    if await store.head(source) is None:
        return target.uri if await store.head(target) is not None else None
    copy = {"Bucket": target.bucket, "Key": target.key, "CopySource": {"Bucket": source.bucket, "Key": source.key},
            "TaggingDirective": "REPLACE", "Tagging": TAGGING, "MetadataDirective": "COPY"}
    try:
        await store.client.copy_object(**copy, StorageClass=COLD_STORAGE_CLASS)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("InvalidStorageClass", "NotImplemented"):
            raise
        await store.client.copy_object(**copy)  # a server without cold classes: prefix and tag only
    await store.client.delete_object(Bucket=source.bucket, Key=source.key)
    return target.uri


async def move_from_cold(store: ObjectStore, uri: str) -> None:
    """Bring an archived artifact back to `uri`, where it was before archiving, in the default
    storage class and untagged. Idempotent like the move out: a restore that already happened
    is found and not redone (the archive copy is deleted only once the artifact is back)."""
    source = archive_location(uri)
    target = parse_s3_uri(uri)
    if await store.head(source) is None:
        if await store.head(target) is None:
            raise FileNotFoundError(f"neither {uri} nor its archive copy {source.uri} exists")
        return
    await store.client.copy_object(Bucket=target.bucket, Key=target.key,
                                   CopySource={"Bucket": source.bucket, "Key": source.key},
                                   TaggingDirective="REPLACE", Tagging="", MetadataDirective="COPY")
    await store.client.delete_object(Bucket=source.bucket, Key=source.key)
