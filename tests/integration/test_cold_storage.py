"""archival's cold-storage fallback, through a running archival service: on an S3 server that
has no cold storage classes (it answers `InvalidStorageClass`), an archived artifact is still
moved under `archive/` and tagged, only without the colder class.

versitygw accepts any storage class, so the test puts a small proxy in front of the real S3
server that refuses requests naming one and forwards everything else untouched (signatures
still verify upstream: the Host header and the path are passed on exactly)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import yarl
from aiohttp import web

from services.archival.app import create_app
from services.archival.cold import COLD_STORAGE_CLASS, TAGGING
from shared.broker import ensure_topics
from shared.db import migrate
from shared.events import ArtifactRef, ModelDemoted, ModelDemotedData, ModelIngested, ModelIngestedData, new_event
from shared.settings import Settings
from shared.storage import ObjectStore, S3Location
from tests.conftest import Endpoints, _with_database
from tests.support import Kafka, eventually, for_model, signed, unique_name

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
REFUSAL = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidStorageClass</Code>'
           b"<Message>The storage class you specified is not valid</Message></Error>")


class NoColdStorageS3:
    """An S3 endpoint without storage classes in front of a real one."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.refused: list[str] = []  # the storage classes asked for, and refused
        self.forwarded = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("x-amz-storage-class")
        if asked and asked != "STANDARD":
            self.refused.append(asked)
            return web.Response(status=400, body=REFUSAL, content_type="application/xml")
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"expect"}}
        async with self._session.request(request.method, yarl.URL(self.upstream + request.raw_path, encoded=True),
                                         headers=headers, data=body if body else None,
                                         skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding",
                                                            "Content-Type")) as upstream:
            payload = await upstream.read()
            self.forwarded += 1
            return web.Response(status=upstream.status, body=payload, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP})


@pytest.fixture
async def no_cold_s3(settings: Settings) -> AsyncIterator[NoColdStorageS3]:
    proxy = NoColdStorageS3(settings.s3_endpoint_url or "")
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def own_database(settings: Settings, endpoints: Endpoints) -> AsyncIterator[str]:
    """A database of its own: the session's archival (same service name) would otherwise be
    the elected outbox relay and publish this one's events under the session's topics."""
    database = f"modelreg_cold_{uuid.uuid4().hex[:8]}"
    admin_url = _with_database(endpoints.database_url, "postgres")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    url = _with_database(settings.dsn, database)
    await migrate(url)
    yield url
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.parametrize("request_first", [False, True], ids=["ingested-first", "archive-request-first"])
async def test_without_cold_storage_classes_an_archived_artifact_is_still_moved_and_tagged(
        settings: Settings, no_cold_s3: NoColdStorageS3, own_database: str, request_first: bool) -> None:
    """Also when the archive request overtakes the version's `model.ingested` (Kafka does not
    order the two topics): the artifact moves once its location arrives."""
    # an archival service of its own (topics, database), whose S3 is the server without classes
    mine = settings.model_copy(update={"s3_endpoint_url": no_cold_s3.url,
                                       "database_url": settings.database_url.__class__(own_database),
                                       "topic_prefix": f"{settings.topic_prefix}cold{uuid.uuid4().hex[:4]}."})
    await ensure_topics(mine)
    tap = Kafka(mine)
    await tap.start(("model.archived",))
    archival = create_app(mine)
    await archival.start()
    db = await asyncpg.connect(own_database)
    try:
        name = unique_name("cold")
        body = b"an artifact bound for cold storage"
        sha256 = hashlib.sha256(body).hexdigest()
        stored = S3Location(settings.s3_bucket, f"artifacts/{name}/1/{sha256}")
        async with ObjectStore(settings) as store:  # straight to the real server
            await store.ensure_bucket()
            await store.client.put_object(Bucket=stored.bucket, Key=stored.key, Body=body)
        # what ingest and promotion (an approver's request) would have published, signed as theirs
        ingested = new_event(ModelIngested, ModelIngestedData(
            name=name, version=1, artifact=ArtifactRef(uri=stored.uri, sha256=sha256, size_bytes=len(body))),
            source="modelreg/ingest")
        demoted = new_event(ModelDemoted, ModelDemotedData(
            name=name, version=1, from_stage="none", to_stage="archived", reason="manual"),
            source="modelreg/promotion", correlationid=ingested.correlationid)
        events = [("model.ingested", ingested, "ingest"), ("model.demoted", demoted, "promotion")]
        for topic, event, service in reversed(events) if request_first else events:
            await tap.publish_raw(topic, signed(mine, event, service=service), key=name)
            # archival has applied it before the next one is sent: the order is the one named
            await eventually(lambda event=event: db.fetchval(
                "SELECT count(*) = 1 FROM processed_events WHERE event_id = $1", event.id))
        archived = (await tap.wait_for("model.archived", for_model(name, 1)))[0]
        assert (archived.data["reason"], archived.data["restorable"]) == ("manual", True)
        assert no_cold_s3.refused == [COLD_STORAGE_CLASS]  # it asked for the cold class once, refused
        target = S3Location(stored.bucket, "archive/" + stored.key)
        async with ObjectStore(settings) as store:
            assert await store.head(stored) is None
            got = await store.client.get_object(Bucket=target.bucket, Key=target.key)
            assert await got["Body"].read() == body
            assert got.get("StorageClass", "STANDARD") == "STANDARD"
            tags = await store.client.get_object_tagging(Bucket=target.bucket, Key=target.key)
        key, value = TAGGING.split("=")
        assert {"Key": key, "Value": value} in tags["TagSet"]
    finally:
        await db.close()
        await archival.stop()
        await tap.stop()
