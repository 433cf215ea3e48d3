"""A lean S3 client for the registry's hot path: GET, HEAD, conditional PUT, DELETE and a
checksummed server-side copy of objects, and a bucket's HEAD, listing and object lock, over one
keep-alive aiohttp session, signed with AWS Signature Version 4.

botocore spends about 1.5 ms of CPU per request (endpoint rules, hooks, signing); on the two
cores a registry shares with Kafka and PostgreSQL that capped ingest near 300 small artifacts
a second. The same requests signed here cost about a quarter of that, and a process that needs
nothing else never imports botocore's client (about 23 MiB). Everything else (multipart
uploads and copies, tagging, presigned URLs, creating buckets) stays with aioboto3.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

import aiohttp
import yarl
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_META = "x-amz-meta-"  # an object's user metadata, one header each
_SIGNED_ALWAYS = ("host", "x-amz-content-sha256", "x-amz-date")


class LeanS3:
    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str, *,
                 session_token: str | None = None, connections: int = 64) -> None:
        parts = urlsplit(endpoint)
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._token = session_token
        self._keys: dict[str, bytes] = {}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=60), auto_decompress=False)

    async def close(self) -> None:
        await self._session.close()

    # -- signing ------------------------------------------------------------------------

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = hmac.new(f"AWS4{self._secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {day: key}
        return key

    def sign(self, method: str, path: str, payload_sha256: str, headers: dict[str, str] | None = None,
             now: datetime.datetime | None = None, query: str = "") -> dict[str, str]:
        """Headers for a SigV4 header-authenticated request (path already URI-encoded, `query`
        the canonical query string)."""
        now = now or datetime.datetime.now(datetime.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        signed = {"host": self._host, "x-amz-content-sha256": payload_sha256, "x-amz-date": stamp,
                  **{k.lower(): v for k, v in (headers or {}).items()}}
        if self._token:
            signed["x-amz-security-token"] = self._token
        names = sorted(signed)
        canonical = "\n".join([method, path, query, *(f"{n}:{str(signed[n]).strip()}" for n in names), "",
                               ";".join(names), payload_sha256])
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
                                   f"SignedHeaders={';'.join(names)}, Signature={signature}")
        del signed["host"]
        return signed

    # -- requests -----------------------------------------------------------------------

    @staticmethod
    def _path(bucket: str, key: str) -> str:
        if not key:  # the bucket itself
            return f"/{quote(bucket, safe='')}"
        return f"/{quote(bucket, safe='')}/{quote(key, safe='/-_.~')}"

    async def _request(self, method: str, bucket: str, key: str, *, body: bytes | None = None,
                       payload_sha256: str = EMPTY_SHA256, headers: dict[str, str] | None = None,
                       query: dict[str, str] | None = None, operation: str) -> aiohttp.ClientResponse:
        path = self._path(bucket, key)
        canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                                   for k, v in sorted((query or {}).items()))
        signed = self.sign(method, path, payload_sha256, headers, query=canonical_query)
        # encoded=True: the path is sent exactly as signed (yarl would otherwise drop the `.`
        # segment of a key such as `a/./b`, and the server's signature would not match).
        url = yarl.URL(self._base + path + (f"?{canonical_query}" if canonical_query else ""), encoded=True)
        try:
            response = await self._session.request(method, url, data=body, headers=signed)
        except aiohttp.ClientError as exc:
            raise EndpointConnectionError(endpoint_url=self._base) from exc
        if response.status >= 300:
            text = await response.read()
            response.release()
            raise _client_error(response.status, text, operation)
        return response

    async def head(self, bucket: str, key: str, *, checksum: bool = False) -> dict[str, Any] | None:
        """Size, ETag, content type and user metadata (botocore's names); with `checksum`, also
        the checksum the server keeps (ChecksumSHA256, ChecksumType) where it has one."""
        try:
            response = await self._request("HEAD", bucket, key, operation="HeadObject",
                                           headers={"x-amz-checksum-mode": "ENABLED"} if checksum else None)
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return None
            raise
        response.release()
        answer = {"ContentLength": int(response.headers.get("Content-Length", 0)),
                  "ETag": response.headers.get("ETag"),
                  "Metadata": {name[len(_META):]: value for name, value in response.headers.items()
                               if name.lower().startswith(_META)}}
        if "Content-Type" in response.headers:
            answer["ContentType"] = response.headers["Content-Type"]
        if checksum:
            for header, name in (("x-amz-checksum-sha256", "ChecksumSHA256"), ("x-amz-checksum-type", "ChecksumType")):
                if header in response.headers:
                    answer[name] = response.headers[header]
        return answer

    async def put_if_absent(self, bucket: str, key: str, body: bytes, sha256: str) -> bool:
        """Store `body` unless the key exists (S3's If-None-Match); False when it existed.

        The SHA-256 goes along as the object's checksum too: the server refuses the body if it
        does not match and keeps it, so a later integrity check is one HEAD, not a download."""
        try:
            response = await self._request("PUT", bucket, key, body=body, payload_sha256=sha256,
                                           headers={"if-none-match": "*",
                                                    "content-type": "application/octet-stream",
                                                    "content-length": str(len(body)),
                                                    "x-amz-checksum-sha256": base64.b64encode(
                                                        bytes.fromhex(sha256)).decode()},
                                           operation="PutObject")
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412:
                return False
            raise
        response.release()
        return True

    async def stream(self, bucket: str, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        response = await self._request("GET", bucket, key, operation="GetObject")
        try:
            async for chunk in response.content.iter_chunked(chunk_size):
                yield chunk
        except aiohttp.ClientError as exc:  # the server went away in the middle of the body
            raise ConnectionClosedError(endpoint_url=self._base) from exc
        finally:
            response.release()

    async def head_bucket(self, bucket: str) -> None:
        """Raises (ClientError 404, 403, ...) unless the bucket exists and may be used."""
        response = await self._request("HEAD", bucket, "", operation="HeadBucket")
        response.release()

    async def list(self, bucket: str, prefix: str, page_size: int = 1000) -> AsyncIterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`, in key order (ListObjectsV2, page by page).

        Keys are asked for as they are, not URL-encoded (`encoding-type=url`, which botocore
        always asks for): versitygw left a `+` in one of the tests' keys unencoded, which
        decoding turns into a space (AWS writes a space as `+`). Only a page that XML cannot
        carry as it is (a key with control characters) is asked for again encoded, and decoded
        as botocore decodes it."""
        token: str | None = None
        seen_tokens: set[str] = set()
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size),
                     **({"continuation-token": token} if token else {})}
            encoded = False
            try:
                page = ElementTree.fromstring(await self._list_page(bucket, query))
            except ElementTree.ParseError:
                encoded = True
                page = ElementTree.fromstring(await self._list_page(bucket, {**query, "encoding-type": "url"}))
            for item in page.iterfind("{*}Contents"):
                key = item.findtext("{*}Key") or ""
                yield unquote_plus(key) if encoded else key, int(item.findtext("{*}Size") or 0)
            if page.findtext("{*}IsTruncated") != "true":
                return
            token = page.findtext("{*}NextContinuationToken")
            if not token or token in seen_tokens:  # botocore's paginator refuses these too
                raise ClientError({"Error": {"Code": "BadListing", "Message": "the S3 server's listing of "
                                             f"{prefix!r} is truncated without a new continuation token"},
                                   "ResponseMetadata": {"HTTPStatusCode": 502}}, "ListObjectsV2")
            seen_tokens.add(token)

    async def _list_page(self, bucket: str, query: dict[str, str]) -> bytes:
        return await self._body(await self._request("GET", bucket, "", query=query, operation="ListObjectsV2"))

    async def _body(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole (small) body of an answer, then the connection back to the pool."""
        try:
            return await response.read()
        except aiohttp.ClientError as exc:  # the server went away in the middle of the body
            raise ConnectionClosedError(endpoint_url=self._base) from exc
        finally:
            response.release()

    async def object_lock_enabled(self, bucket: str) -> bool:
        """Whether the bucket was made with S3 Object Lock (GetObjectLockConfiguration); False
        where it was not, or the server has no object lock."""
        try:
            response = await self._request("GET", bucket, "", query={"object-lock": ""},
                                           operation="GetObjectLockConfiguration")
        except ClientError as exc:
            code, status = exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]
            if "ObjectLock" in code or status == 501 or code == "NotImplemented" or (
                    status == 404 and code != "NoSuchBucket"):  # AWS: ObjectLockConfigurationNotFoundError
                return False  # (a server without object lock: NotImplemented)
            raise
        return ElementTree.fromstring(await self._body(response)).findtext("{*}ObjectLockEnabled") == "Enabled"

    async def delete(self, bucket: str, key: str) -> None:
        response = await self._request("DELETE", bucket, key, operation="DeleteObject")
        response.release()

    async def copy(self, source_bucket: str, source_key: str, bucket: str, key: str, *,
                   etag: str | None = None, checksum: bool = False, tagging: str | None = None,
                   storage_class: str | None = None) -> dict[str, str]:
        """One server-side CopyObject (objects up to 5 GiB), keeping the source's metadata and
        content type. `etag`: only that version of the source is copied (else a 412
        PreconditionFailed); `checksum`: the server computes the SHA-256 of what it writes;
        `tagging` (URL-encoded) replaces the tags, None keeps the source's; `storage_class`
        sets the class. Returns the checksum fields of its CopyObjectResult, by botocore's
        names (ChecksumSHA256, ChecksumType), those it gave."""
        headers = {"x-amz-copy-source": quote(f"{source_bucket}/{source_key}", safe="/-_.~"),
                   "x-amz-metadata-directive": "COPY", "content-length": "0"}
        if etag:
            headers["x-amz-copy-source-if-match"] = etag
        if checksum:
            headers["x-amz-checksum-algorithm"] = "SHA256"
        if tagging is not None:
            headers |= {"x-amz-tagging-directive": "REPLACE", "x-amz-tagging": tagging}
        if storage_class:
            headers["x-amz-storage-class"] = storage_class
        body = await self._body(await self._request("PUT", bucket, key, headers=headers, operation="CopyObject"))
        return copy_result(body)


def copy_result(body: bytes) -> dict[str, str]:
    """A CopyObject answer's checksum fields. S3 may fail a copy after its 200 status went out
    (a long copy), with an error document as the body: that raises as a 500 with its code, as
    botocore raises it; so does an answer that is no CopyObjectResult (torn, or a proxy's page)."""
    body = body.strip()  # the whitespace S3 sends to keep a long copy's connection open
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise _client_error(500, body, "CopyObject") from None
    if root.tag.rpartition("}")[2] != "CopyObjectResult":
        raise _client_error(500, body if root.tag.rpartition("}")[2] == "Error" else b"", "CopyObject")
    return {name: text for name in ("ChecksumSHA256", "ChecksumType")
            if (text := root.findtext(f"{{*}}{name}")) is not None}


def _client_error(status: int, body: bytes, operation: str) -> ClientError:
    """The error botocore would raise, so callers handle both clients alike."""
    code, message = str(status), ""
    if body:
        try:
            root = ElementTree.fromstring(body.strip())
            code = root.findtext("{*}Code") or code
            message = root.findtext("{*}Message") or ""
        except ElementTree.ParseError:
            message = body[:200].decode(errors="replace")
    elif status == 404:
        code = "NoSuchKey"
    elif status == 412:  # a conditional request's answer without a body (HEAD)
        code = "PreconditionFailed"
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
