"""S3 object storage through aioboto3: one client per process, streamed transfers."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from shared.s3lean import LeanS3
from shared.settings import Settings

# Parts of a multipart transfer: S3's minimum is 5 MiB; 8 MiB keeps memory bounded.
PART_SIZE = 8 * 1024 * 1024


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
        self._session = aioboto3.Session(
            aws_access_key_id=settings.aws_access_key_id.get_secret_value(),
            aws_secret_access_key=settings.aws_secret_access_key.get_secret_value(),
            region_name=settings.aws_region,
        )
        self._stack = contextlib.AsyncExitStack()
        self.client: Any = None  # aioboto3: multipart, copies, tags, presigning, buckets
        self.lean: LeanS3 | None = None  # the hot path: get, head, conditional put

    async def __aenter__(self) -> ObjectStore:
        config = AioConfig(retries={"max_attempts": 3, "mode": "standard"},
                        max_pool_connections=32, connect_timeout=5, read_timeout=60,
                        s3={"addressing_style": "path"}, signature_version="s3v4")
        self.client = await self._stack.enter_async_context(
            self._session.client("s3", endpoint_url=self.settings.s3_endpoint_url, config=config))
        settings = self.settings
        self.lean = LeanS3(settings.s3_endpoint_url or f"https://s3.{settings.aws_region}.amazonaws.com",
                           settings.aws_access_key_id.get_secret_value(),
                           settings.aws_secret_access_key.get_secret_value(), settings.aws_region,
                           session_token=os.environ.get("AWS_SESSION_TOKEN"))
        self._stack.push_async_callback(self.lean.close)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if not is_missing(exc) and exc.response.get("Error", {}).get("Code") != "403":
                raise
            with contextlib.suppress(ClientError):
                await self.client.create_bucket(Bucket=self.bucket)

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
        found: list[tuple[str, int]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix,
                                             PaginationConfig={"PageSize": min(1000, max(1, limit))}):
            for item in page.get("Contents", []):
                found.append((item["Key"], int(item["Size"])))
                if len(found) >= limit:
                    return found
        return found

    async def stream(self, location: S3Location, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        assert self.lean is not None
        async for chunk in self.lean.stream(location.bucket, location.key, chunk_size):
            yield chunk
