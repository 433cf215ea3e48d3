"""The web UI's artifact download and sign-out, in headless Chromium against a real uvicorn
server: the Download button hands the browser a presigned URL the S3 server honours (the bytes
arrive), and after signing in with a token, Sign out drops the session cookie."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.api import auth
from services.api.app import ApiService
from services.api.settings import ApiSettings
from services.api.ui import COOKIE
from shared.settings import Settings
from shared.storage import ObjectStore, parse_s3_uri
from tests.e2e.seed import Life, write
from tests.e2e.test_ui import page, pool  # noqa: F401 (fixtures: a tab on `site`, the run's database)

RUN = uuid.uuid4().hex[:6]
NAME = f"dl-ui{RUN}"  # its own prefix: the other UI tests count the `life-ui*` models


@pytest.fixture(scope="module")
async def stored_artifact(settings: Settings) -> AsyncIterator[bytes]:
    """The bytes the seeded v1's artifact URI names, really stored there."""
    life = Life(NAME)
    life.register(1, auc=0.9)
    uri = life.events[0].data.evidence["artifact_uri"]
    body = f"{NAME}-1".encode()  # what the seed hashed into that URI
    location = parse_s3_uri(uri)
    assert location.key.endswith(hashlib.sha256(body).hexdigest())
    async with ObjectStore(settings.model_copy(update={"s3_bucket": location.bucket})) as store:
        await store.ensure_bucket()
        await (await store.boto()).put_object(Bucket=location.bucket, Key=location.key, Body=body)
    yield body
    async with ObjectStore(settings) as store:
        await (await store.boto()).delete_object(Bucket=location.bucket, Key=location.key)


@pytest.fixture(scope="module")
async def site(settings: Settings, pool: asyncpg.Pool, stored_artifact: bytes) -> AsyncIterator[str]:  # noqa: F811
    life = Life(NAME)
    life.register(1, auc=0.9)
    await write(settings, pool, life)
    service = ApiService(settings, ApiSettings(port=0))
    await service.start()
    yield service.url
    await service.stop()


async def test_the_download_button_delivers_the_stored_artifact(
        page: Any, stored_artifact: bytes, tmp_path: Path) -> None:  # noqa: F811
    await page.goto(f"/models/{NAME}/versions/1")
    shown_sha = hashlib.sha256(stored_artifact).hexdigest()
    assert shown_sha in await page.locator(".artifact-card").inner_text()
    async with page.expect_download() as started:
        await page.locator(".artifact-card a.button", has_text="Download").click()
    download = await started.value
    saved = tmp_path / "artifact.bin"
    await download.save_as(str(saved))
    assert saved.read_bytes() == stored_artifact
    assert f"/{NAME}/1/" in download.url and "X-Amz-Signature=" in download.url  # presigned, straight from S3


async def test_sign_out_ends_the_browser_session(page: Any, pool: asyncpg.Pool, site: str) -> None:  # noqa: F811
    token, _ = await auth.create(pool, name=f"ui-reader-{RUN}", role="reader")
    target = f"/models/{NAME}/versions/1"
    await page.goto(f"/ui/login?next={target}")
    assert await page.locator("form.signout").count() == 0  # nobody signed in yet
    await page.locator("form.login input[name=token]").fill(token)
    await page.locator("form.login button").click()
    await page.wait_for_url(f"**{target}")
    assert [c["name"] for c in await page.context.cookies()] == [COOKIE]

    await page.locator("form.signout button", has_text="Sign out").click()
    await page.wait_for_url(site.rstrip("/") + "/")  # back on the models page
    assert [c["name"] for c in await page.context.cookies()] == []
    assert await page.locator("form.signout").count() == 0
