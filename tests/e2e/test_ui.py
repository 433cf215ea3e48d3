"""The web UI as a data scientist sees it: models with stage badges and champions, a model's
metric chart with its threshold lines and its timeline (a rollback among them), a version's
gates, checks, evaluations and audit trail, and pages that follow new events by themselves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from services.api.app import ApiService
from services.api.settings import ApiSettings
from shared.db import create_pool, migrate
from shared.settings import Settings
from tests.e2e.conftest import ARTIFACTS
from tests.e2e.seed import Life, three_versions_and_a_rollback, write

RUN = uuid.uuid4().hex[:6]
MAIN = f"life-ui{RUN}-fraud"      # three versions, one rollback (the policy's "life-*" rule)
SIDE = f"life-ui{RUN}-churn"      # one version in staging


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    await migrate(settings.dsn)
    db = await create_pool(settings.dsn)
    yield db
    await db.close()


@pytest.fixture(scope="module")
async def site(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    await write(settings, pool, three_versions_and_a_rollback(MAIN))
    side = Life(SIDE)
    side.register(1, auc=0.88)
    side.evaluate(1, 0.88)
    await write(settings, pool, side)
    service = ApiService(settings, ApiSettings(port=0))
    await service.start()
    yield service.url
    await service.stop()


@pytest.fixture
async def page(browser: Any, site: str) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, base_url=site)
    tab = await context.new_page()
    tab.requests = []  # type: ignore[attr-defined]
    tab.errors = []  # type: ignore[attr-defined]
    tab.on("request", lambda request: tab.requests.append(request.url))  # type: ignore[attr-defined]
    tab.on("console", lambda message: message.type == "error" and tab.errors.append(message.text))  # type: ignore[attr-defined]
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))  # type: ignore[attr-defined]
    yield tab
    await context.close()
    # no script error, nothing the content security policy had to refuse (404 pages log their status)
    assert not [e for e in tab.errors if "404" not in e], tab.errors  # type: ignore[attr-defined]


def _only_from(site: str, urls: list[str]) -> None:
    foreign = [u for u in urls if not u.startswith(site) and not u.startswith("data:")]
    assert not foreign, f"the UI fetched from elsewhere: {foreign}"


async def test_models_show_stage_badges_and_their_champion(page: Any, site: str) -> None:
    await page.goto(f"/?prefix=life-ui{RUN}")
    cards = page.locator(".model-card")
    assert await cards.count() == 2
    main = page.locator(f'.model-card[data-model="{MAIN}"]')
    assert (await main.locator(".champion").inner_text()).strip() == "★ v1 in production"
    badges = {await b.get_attribute("data-stage"): (await b.inner_text()).split() for b in
              await main.locator(".badge.stage").all()}
    assert badges == {"production": ["production", "1"], "staging": ["staging", "1"], "none": ["none", "1"]}
    side = page.locator(f'.model-card[data-model="{SIDE}"]')
    assert "no champion" in await side.locator(".champion").inner_text()
    assert await side.locator(".badge.stage-staging").count() == 1
    # a production badge is coloured unlike a staging one
    colours = await page.evaluate("""() => ['production', 'staging'].map(s =>
        getComputedStyle(document.querySelector('.badge.stage-' + s)).color)""")
    assert colours[0] != colours[1]
    _only_from(site, page.requests)


async def test_a_models_page_charts_the_metric_and_tells_its_story(page: Any, site: str) -> None:
    await page.goto(f"/?prefix=life-ui{RUN}")
    await page.locator(f'.model-card[data-model="{MAIN}"]').click()
    await page.wait_for_url(f"**/models/{MAIN}")
    assert (await page.locator("#champion").inner_text()).strip() == "★ v1 in production"

    chart = page.locator("svg.chart")
    assert await chart.get_attribute("data-metric") == "auc"
    points = chart.locator("circle.point")
    assert await points.count() == 3
    assert [await p.get_attribute("data-version") for p in await points.all()] == ["1", "2", "3"]
    assert [float(await p.get_attribute("data-value")) for p in await points.all()] == [0.92, 0.95, 0.925]
    assert "champion" in (await points.nth(0).get_attribute("class") or "")
    threshold = chart.locator("line.threshold")
    assert await threshold.count() == 1 and await threshold.get_attribute("data-threshold") == "auc >= 0.9"
    assert await chart.locator("line.rollback").count() == 1
    box = await threshold.bounding_box()
    assert box is not None and box["width"] > 300  # drawn across the chart

    rows = page.locator("table.versions tbody tr")
    stages = {await r.get_attribute("data-version"): await r.locator(".badge.stage").inner_text()
              for r in await rows.all()}
    assert stages == {"1": "production", "2": "none", "3": "staging"}

    timeline = page.locator(".timeline .event")
    kinds = [await e.get_attribute("data-kind") for e in await timeline.all()]
    assert kinds.count("rollback") == 2 and "promotion" in kinds and "demotion" in kinds
    newest = await timeline.nth(0).inner_text()
    assert "v1 restored to production (rollback)" in newest
    assert "v2 rolled back out of production" in await timeline.nth(1).inner_text()
    assert "broke auc = 0.8" in await timeline.nth(1).inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "model-page.png"), full_page=True)
    assert (ARTIFACTS / "model-page.png").stat().st_size > 10_000
    _only_from(site, page.requests)


async def test_a_versions_page_shows_gates_checks_evaluations_and_audit(page: Any) -> None:
    await page.goto(f"/models/{MAIN}")
    await page.locator('table.versions tr[data-version="3"] a').click()
    await page.wait_for_url(f"**/models/{MAIN}/versions/3")
    assert await page.locator(".hero .badge.stage").inner_text() == "staging"
    failing = page.locator('.gate.fail[data-gate="champion:auc"]')
    assert await failing.count() == 1
    assert "does not beat champion v1's 0.92" in await failing.inner_text()
    assert await page.locator('.gate.pass[data-gate="threshold:auc"]').count() == 1
    assert (await page.locator(".summary").inner_text()).startswith("held")
    assert await page.locator(".check.pass").count() == 3
    assert "0.925" in await page.locator("table.evaluations").inner_text()
    actions = [await r.get_attribute("data-action") for r in await page.locator("table.audit tbody tr").all()]
    assert {"ingested", "validated", "promoted", "evaluated", "held"} <= set(actions)
    assert "sha256" in await page.locator(".artifact-card").inner_text()


async def test_pages_follow_new_events_without_reloading(page: Any, pool: asyncpg.Pool, settings: Settings) -> None:
    await page.goto(f"/models/{MAIN}")
    await page.evaluate("window.__sameDocument = true")
    assert await page.locator("svg.chart circle.point").count() == 3
    later = Life(MAIN, start=datetime.now(UTC))
    later.correlation[4] = uuid.uuid4()
    later.register(4, auc=0.97)
    await write(settings, pool, later)
    await page.locator('table.versions tr[data-version="4"]').wait_for(timeout=15_000)
    assert await page.locator("svg.chart circle.point").count() == 4
    assert await page.evaluate("window.__sameDocument") is True  # updated in place, not reloaded
    assert "staging" in await page.locator('table.versions tr[data-version="4"] .badge.stage').inner_text()


async def test_the_pages_fit_a_phone(browser: Any, site: str) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, base_url=site)
    try:
        tab = await context.new_page()
        for path in (f"/?prefix=life-ui{RUN}", f"/models/{MAIN}", f"/models/{MAIN}/versions/2"):
            await tab.goto(path)
            overflow = await tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (path, overflow)
    finally:
        await context.close()


async def test_unknown_pages_say_so(page: Any) -> None:
    response = await page.goto("/models/no-such-model")
    assert response.status == 404
    assert "no model named 'no-such-model'" in await page.locator("main").inner_text()
    await asyncio.sleep(0)
