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
from dataclasses import dataclass
from typing import Any

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
UNAVAILABLE = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
               b"<Message>Please reduce your request rate.</Message></Error>")


class NoColdStorageS3:
    """An S3 endpoint without storage classes in front of a real one."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.refused: list[str] = []  # the storage classes asked for, and refused
        self.forwarded = 0
        self.down = False  # answer every request 503, as an S3 server in an outage
        self.refused_while_down = 0
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
        if self.down:
            self.refused_while_down += 1
            return web.Response(status=503, body=UNAVAILABLE, content_type="application/xml")
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


@dataclass
class OwnArchival:
    """An archival service of its own (topics, database), whose S3 is the proxy."""

    settings: Settings
    tap: Kafka
    db: asyncpg.Connection

    async def stored_artifact(self, store_settings: Settings, name: str, body: bytes) -> S3Location:
        stored = S3Location(store_settings.s3_bucket, f"artifacts/{name}/1/{hashlib.sha256(body).hexdigest()}")
        async with ObjectStore(store_settings) as store:  # straight to the real server
            await store.ensure_bucket()
            await (await store.boto()).put_object(Bucket=stored.bucket, Key=stored.key, Body=body)
        return stored

    def archive_request(self, name: str, stored: S3Location, body: bytes) -> list[tuple[str, Any, str]]:
        """What ingest and promotion (an approver's request) would have published, with who signs each."""
        ingested = new_event(ModelIngested, ModelIngestedData(
            name=name, version=1, artifact=ArtifactRef(uri=stored.uri, sha256=hashlib.sha256(body).hexdigest(),
                                                       size_bytes=len(body))), source="modelreg/ingest")
        demoted = new_event(ModelDemoted, ModelDemotedData(
            name=name, version=1, from_stage="none", to_stage="archived", reason="manual"),
            source="modelreg/promotion", correlationid=ingested.correlationid)
        return [("model.ingested", ingested, "ingest"), ("model.demoted", demoted, "promotion")]

    async def publish(self, topic: str, event: Any, service: str, name: str) -> None:
        await self.tap.publish_raw(topic, signed(self.settings, event, service=service), key=name)


@pytest.fixture
async def own_archival(settings: Settings, no_cold_s3: NoColdStorageS3, own_database: str
                       ) -> AsyncIterator[OwnArchival]:
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
        yield OwnArchival(mine, tap, db)
    finally:
        await db.close()
        await archival.stop()
        await tap.stop()


@pytest.mark.parametrize("request_first", [False, True], ids=["ingested-first", "archive-request-first"])
async def test_without_cold_storage_classes_an_archived_artifact_is_still_moved_and_tagged(
        settings: Settings, no_cold_s3: NoColdStorageS3, own_archival: OwnArchival, request_first: bool) -> None:
    """Also when the archive request overtakes the version's `model.ingested` (Kafka does not
    order the two topics): the artifact moves once its location arrives."""
    name = unique_name("cold")
    body = b"an artifact bound for cold storage"
    stored = await own_archival.stored_artifact(settings, name, body)
    events = own_archival.archive_request(name, stored, body)
    for topic, event, service in reversed(events) if request_first else events:
        await own_archival.publish(topic, event, service, name)
        # archival has applied it before the next one is sent: the order is the one named
        await eventually(lambda event=event: own_archival.db.fetchval(
            "SELECT count(*) = 1 FROM processed_events WHERE event_id = $1", event.id))
    archived = (await own_archival.tap.wait_for("model.archived", for_model(name, 1)))[0]
    assert (archived.data["reason"], archived.data["restorable"]) == ("manual", True)
    assert no_cold_s3.refused == [COLD_STORAGE_CLASS]  # it asked for the cold class once, refused
    target = S3Location(stored.bucket, "archive/" + stored.key)
    async with ObjectStore(settings) as store:
        assert await store.head(stored) is None
        got = await (await store.boto()).get_object(Bucket=target.bucket, Key=target.key)
        assert await got["Body"].read() == body
        assert got.get("StorageClass", "STANDARD") == "STANDARD"
        tags = await (await store.boto()).get_object_tagging(Bucket=target.bucket, Key=target.key)
    key, value = TAGGING.split("=")
    assert {"Key": key, "Value": value} in tags["TagSet"]


async def test_an_archive_is_decided_while_s3_is_down_and_the_artifact_moves_once_it_is_back(
        settings: Settings, no_cold_s3: NoColdStorageS3, own_archival: OwnArchival) -> None:
    """No S3 call inside an open transaction: archival records its decision without touching
    S3, so an outage holds no transaction (and no model's rows) open; the artifact moves and
    model.archived goes out once S3 answers again."""
    name = unique_name("cold")
    body = b"an artifact that waits out an S3 outage"
    stored = await own_archival.stored_artifact(settings, name, body)
    events = own_archival.archive_request(name, stored, body)
    no_cold_s3.down = True
    for topic, event, service in events:
        await own_archival.publish(topic, event, service, name)
    # Both events applied and committed during the outage, the decision recorded with them.
    ids = [event.id for _, event, _ in events]
    await eventually(lambda: own_archival.db.fetchval(
        "SELECT count(*) = 2 FROM processed_events WHERE event_id = ANY($1::uuid[])", ids))
    row = await own_archival.db.fetchrow(
        "SELECT archive_requested_at, archived_at, archive_reason FROM archival_versions "
        "WHERE name = $1 AND version = 1", name)
    assert row["archive_requested_at"] is not None and row["archived_at"] is None, dict(row)
    assert row["archive_reason"] == "manual"
    await eventually(lambda: no_cold_s3.refused_while_down > 0)  # the move was tried, and refused
    assert not own_archival.tap.matching("model.archived", for_model(name, 1))
    async with ObjectStore(settings) as store:
        assert await store.head(stored) is not None  # still where it was

    no_cold_s3.down = False
    archived = (await own_archival.tap.wait_for("model.archived", for_model(name, 1)))[0]
    assert (archived.data["reason"], archived.data["restorable"]) == ("manual", True)
    assert await own_archival.db.fetchval(
        "SELECT archived_at IS NOT NULL FROM archival_versions WHERE name = $1 AND version = 1", name)
    async with ObjectStore(settings) as store:
        assert await store.head(stored) is None
        assert await store.head(S3Location(stored.bucket, "archive/" + stored.key)) is not None
