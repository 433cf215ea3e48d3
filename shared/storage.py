"""S3 object storage: one client per process, streamed transfers.

The hot path (get, head, conditional put, delete, listings) goes through `LeanS3`. aioboto3
serves the rest (multipart uploads, copies, tags, presigned URLs, buckets) and is imported and
opened on first use: importing it and building its S3 client costs a process about 23 MiB,
which a service that never needs it (promotion, validation, webhooks, the audit writer on a
bucket without object lock; ingest until a big artifact comes) does not carry."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from shared.s3_copy_plan import DEFAULT_COPY_PART, copy_ranges
from shared.s3lean import LeanS3
from shared.settings import Settings

# Parts of a multipart transfer: S3's minimum is 5 MiB; 8 MiB keeps memory bounded.
PART_SIZE = 8 * 1024 * 1024
# Part copies of one multipart copy in flight at once (the server does the work).
COPY_LANES = 4


# Answers that say "not now" rather than "no": throttling, a server busy or restarting, and a
# request whose signature time is off from the server's clock (a skewed clock is corrected by
# NTP, or the signature is simply made again with the next attempt's time).
RETRYABLE_CODES = frozenset({
    "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "TooManyRequestsException", "ServiceUnavailable", "InternalError",
    "RequestTimeTooSkewed", "RequestExpired"})


def is_retryable(exc: BaseException) -> bool:
    """Faults worth waiting out (the server is down, busy or the connection broke, also in the
    middle of a streamed body), as opposed to bad requests."""
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError,
                        ResponseStreamingError, IncompleteReadError, aiohttp.ClientConnectionError,
                        aiohttp.ClientPayloadError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in RETRYABLE_CODES
    return False


def is_missing(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _full_object_sha256(answer: dict[str, Any]) -> str | None:
    """The SHA-256 (hex) of a whole object in a HeadObject or CopyObject answer; None when the
    server gave none, or only a composite one (a checksum of part checksums)."""
    checksum = answer.get("ChecksumSHA256")
    if not checksum or answer.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    return base64.b64decode(checksum).hex()


def parse_s3_uri(uri: str) -> S3Location:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"an s3:// URI needs a bucket and a key: {uri!r}")
    return S3Location(bucket, key)


class ObjectStore:
    """The registry's S3 client; open it once in the service's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._stack = contextlib.AsyncExitStack()
        self._boto: Any = None
        self._opening = asyncio.Lock()
        self._closed = False
        self.lean: LeanS3 | None = None  # the hot path; `boto()` for the rest

    async def __aenter__(self) -> ObjectStore:
        settings = self.settings
        self.lean = LeanS3(settings.s3_endpoint_url or f"https://s3.{settings.aws_region}.amazonaws.com",
                           settings.aws_access_key_id.get_secret_value(),
                           settings.aws_secret_access_key.get_secret_value(), settings.aws_region,
                           session_token=os.environ.get("AWS_SESSION_TOKEN"))
        self._stack.push_async_callback(self.lean.close)
        return self

    async def boto(self) -> Any:
        """The aioboto3 S3 client, opened on first use (closed with the store). Opening it
        loads botocore's S3 model: a one-off pause of the event loop (some 100 ms), which a
        process that presigns on its request path (the API) takes at start instead."""
        if self._boto is None:
            async with self._opening:
                if self._closed:
                    raise RuntimeError("the object store is closed")
                if self._boto is None:
                    import aioboto3
                    from aiobotocore.config import AioConfig

                    settings = self.settings
                    session = aioboto3.Session(
                        aws_access_key_id=settings.aws_access_key_id.get_secret_value(),
                        aws_secret_access_key=settings.aws_secret_access_key.get_secret_value(),
                        region_name=settings.aws_region)
                    config = AioConfig(retries={"max_attempts": 3, "mode": "standard"},
                                       max_pool_connections=32, connect_timeout=5, read_timeout=60,
                                       s3={"addressing_style": "path"}, signature_version="s3v4")
                    self._boto = await self._stack.enter_async_context(
                        session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config))
        return self._boto

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        await self._stack.aclose()

    async def ensure_bucket(self) -> None:
        try:
            await self.head_bucket()
        except ClientError as exc:
            if not is_missing(exc) and exc.response.get("Error", {}).get("Code") != "403":
                raise
            with contextlib.suppress(ClientError):
                await (await self.boto()).create_bucket(Bucket=self.bucket)

    async def object_lock_enabled(self) -> bool:
        """Whether the registry's bucket was made with S3 Object Lock."""
        assert self.lean is not None
        return await self.lean.object_lock_enabled(self.bucket)

    async def head_bucket(self) -> None:
        """Raises unless the registry's bucket exists and these credentials may use it (the
        readiness probes' question)."""
        assert self.lean is not None
        await self.lean.head_bucket(self.bucket)

    async def head(self, location: S3Location) -> dict[str, Any] | None:
        assert self.lean is not None
        return await self.lean.head(location.bucket, location.key)

    async def delete(self, location: S3Location) -> None:
        assert self.lean is not None
        await self.lean.delete(location.bucket, location.key)

    async def put_if_absent(self, location: S3Location, body: bytes, sha256: str) -> bool:
        """One request, never an overwrite; False when the key was taken already."""
        assert self.lean is not None
        return await self.lean.put_if_absent(location.bucket, location.key, body, sha256)

    async def digest(self, location: S3Location) -> tuple[str, int] | None:
        """sha256 and size of a stored object, streamed; None when it is missing."""
        hasher, size = hashlib.sha256(), 0
        try:
            async for chunk in self.stream(location):
                hasher.update(chunk)
                size += len(chunk)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return hasher.hexdigest(), size

    async def list_prefix(self, bucket: str, prefix: str, limit: int) -> list[tuple[str, int]]:
        """(key, size) of the objects under `prefix`, in key order, at most `limit` of them
        (listing stops there: ask for one more than you accept to know there were too many)."""
        return [(prefix + relative, size) async for relative, size in self._listing(bucket, prefix, limit, True)]

    async def list_files(self, prefix: S3Location, limit: int) -> list[tuple[str, int]]:
        """A directory artifact's files: (path relative to the prefix, size), at most `limit`;
        the empty "folder" objects some tools write (a key ending in '/') are no files."""
        return [item async for item in self._listing(prefix.bucket, prefix.key, limit, False)]

    async def _listing(self, bucket: str, prefix: str, limit: int,
                       markers: bool) -> AsyncIterator[tuple[str, int]]:
        assert self.lean is not None
        taken = 0
        async for key, size in self.lean.list(bucket, prefix, page_size=min(1000, max(1, limit))):
            relative = key[len(prefix):]
            if not markers and relative.endswith("/") and size == 0:
                continue
            yield relative, size
            taken += 1
            if taken >= limit:
                return

    async def copy(self, source: S3Location, target: S3Location, *, tagging: str | None = None,
                   storage_class: str | None = None) -> None:
        """Server-side copy keeping the content type and metadata; `tagging` replaces the
        tags (None keeps the source's), `storage_class` sets the class. Objects over
        MODELREG_S3_MULTIPART_COPY_BYTES (S3's 5 GiB limit by default) are copied as a
        multipart upload of ranged UploadPartCopy parts."""
        assert self.lean is not None
        found = await self.lean.head(source.bucket, source.key)
        if found is None:
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"},
                               "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")  # as botocore
        threshold = self.settings.s3_multipart_copy_bytes
        # A size not told (a proxy may drop it from a HEAD answer): one copy, which the server
        # itself refuses if the object is too big for it.
        ranges = copy_ranges(int(found.get("ContentLength") or 0), threshold, min(DEFAULT_COPY_PART, threshold))
        if ranges is None:  # one request: aioboto3 is not needed (nor loaded) for it
            await self.lean.copy(source.bucket, source.key, target.bucket, target.key, tagging=tagging,
                                 storage_class=storage_class)
            return
        s3 = await self.boto()
        where = {"Bucket": target.bucket, "Key": target.key}
        origin = {"Bucket": source.bucket, "Key": source.key}
        cls = {"StorageClass": storage_class} if storage_class else {}
        if tagging is None:
            tag_set = (await s3.get_object_tagging(**origin)).get("TagSet", [])
            tagging = urlencode([(t["Key"], t["Value"]) for t in tag_set])
        upload = await s3.create_multipart_upload(
            **where, Metadata=found["Metadata"],
            ContentType=found.get("ContentType", "application/octet-stream"),
            **({"Tagging": tagging} if tagging else {}), **cls)
        upload_id = upload["UploadId"]
        lanes = asyncio.Semaphore(COPY_LANES)
        # Every part from the object the HEAD saw: a source overwritten meanwhile fails the copy
        # (412, retried by the caller), never splices two objects into one.
        pinned = {"CopySourceIfMatch": found["ETag"]} if found.get("ETag") else {}

        async def part(number: int, first: int, last: int) -> dict[str, Any]:
            async with lanes:
                answer = await s3.upload_part_copy(
                    **where, UploadId=upload_id, PartNumber=number, CopySource=origin,
                    CopySourceRange=f"bytes={first}-{last}", **pinned)
            return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

        try:
            parts = await asyncio.gather(*(part(n, first, last) for n, (first, last) in enumerate(ranges, 1)))
            await s3.complete_multipart_upload(**where, UploadId=upload_id,
                                                        MultipartUpload={"Parts": list(parts)})
        except BaseException:
            # No half-copied upload left to bill for; the next attempt starts over.
            with contextlib.suppress(Exception):
                await s3.abort_multipart_upload(**where, UploadId=upload_id)
            raise

    async def copy_hashed(self, source: S3Location, target: S3Location, etag: str | None) -> str | None:
        """One server-side CopyObject (objects up to 5 GiB) asking the server for the SHA-256 of
        the whole object it wrote (`ChecksumAlgorithm=SHA256`, a FULL_OBJECT checksum). Returns
        that digest in hex, or None when the server gave none (then the caller hashes the copy).
        With `etag`, the server copies only that version of the source (CopySourceIfMatch)."""
        assert self.lean is not None
        return _full_object_sha256(await self.lean.copy(source.bucket, source.key, target.bucket, target.key,
                                                        etag=etag, checksum=True))

    async def stored_checksum(self, location: S3Location) -> tuple[bool, str | None]:
        """Whether the object exists, and the full-object SHA-256 (hex) the server stored with
        it, if any (objects written by `copy_hashed` have one)."""
        head = await self._head_with_checksum(location)
        return (False, None) if head is None else (True, _full_object_sha256(head))

    async def known_digest(self, location: S3Location) -> tuple[str, int] | None:
        """sha256 and size of a stored object, None when it is missing: one HEAD when the server
        keeps a full-object SHA-256 with it (it computed it from the bytes it wrote, and refuses
        a write whose declared checksum does not match them), else the object streamed."""
        head = await self._head_with_checksum(location)
        if head is None:
            return None
        checksum = _full_object_sha256(head)
        if checksum is not None:
            return checksum, int(head["ContentLength"])
        return await self.digest(location)

    async def _head_with_checksum(self, location: S3Location) -> dict[str, Any] | None:
        assert self.lean is not None
        return await self.lean.head(location.bucket, location.key, checksum=True)

    async def read_at_most(self, location: S3Location, limit: int) -> bytes | None:
        """A small object whole, or None once it proves longer than `limit` bytes (read no
        further); a missing one raises, as `stream` does."""
        data = bytearray()
        async for chunk in self.stream(location):
            data += chunk
            if len(data) > limit:
                return None
        return bytes(data)

    async def stream(self, location: S3Location, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        assert self.lean is not None
        async for chunk in self.lean.stream(location.bucket, location.key, chunk_size):
            yield chunk
