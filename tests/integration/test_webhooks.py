"""Webhooks through the running services: a local HTTP receiver verifies every message with the
`standardwebhooks` package, sees each promotion of its glob exactly once and in order although
it answers 503 and then refuses connections for a while in the middle, and the delivery log in
PostgreSQL shows the failed attempts (for a minute-long outage on the deployed retry schedule:
test_webhooks_outage, a slow test). Also: a success bringing the endpoint's backed-off retries
forward, the SSRF guard at creation and at connect, the response cap and time limit, disabling
after a run of failures (audited), endpoints created and deleted in the audit log, pruning the
delivery log, the CLI and both HTTP APIs (the registry's and MLflow's shape).

The webhooks service runs here with a short retry schedule (0.2 s doubling to 1 s), endpoints
disabled after 5 minutes of failures, and the receiver's loopback address allow-listed
(MODELREG_WEBHOOKS_ALLOW_NETWORKS=127.0.0.1/32). What the deployed schedule (5 s doubling to
5 minutes) means for a receiver back after an outage is a unit test (test_webhooks_logic).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.api import auth
from services.api.app import ApiService
from services.webhooks.sender import Sender
from shared.events import TOPICS
from shared.runtime import ServiceApp
from shared.settings import Settings
from shared.webhooks import manage, ssrf, store
from shared.webhooks.logic import Message, WebhookInputError
from tests.integration.conftest import running_api
from tests.integration.test_pipeline import QA, promoted, register
from tests.support import Kafka, as_principal, eventually, settings_for, unique_name

ALLOW = "127.0.0.1/32"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that verifies Standard Webhooks signatures. `mode`: "up"
    (verifies, answers 204), "503" (answers 503 with Retry-After: 1), "slow", "huge"; `stop()`
    closes the port (connections refused) and `start()` opens the same one again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.secrets: dict[str, str] = {}  # path -> secret
        self.mode = "up"
        self.accepted: list[tuple[str, str, dict[str, Any]]] = []  # (path, webhook-id, body)
        self.refused = 0
        self.forged = 0
        self.mlflow: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.startswith("/mlflow"):
            self.mlflow.append(({k.lower(): v for k, v in request.headers.items()}, body))
            return web.Response(status=200, text="ok")
        if self.mode == "503":
            self.refused += 1
            return web.Response(status=503, headers={"Retry-After": "1"}, text="down for maintenance")
        if self.mode == "slow":
            await asyncio.sleep(3)
        if self.mode == "huge":
            return web.Response(status=200, body=b"x" * (1024 * 1024))
        secret = self.secrets.get(request.path)
        try:
            payload = Webhook(secret).verify(body, dict(request.headers)) if secret else None
        except WebhookVerificationError:
            payload = None
        if payload is None:
            self.forged += 1
            return web.Response(status=400, text="bad signature")
        self.accepted.append((request.path, request.headers["webhook-id"], payload))
        return web.Response(status=204)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, _, body in self.accepted if p == path]


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def _webhook_settings(settings: Settings) -> Settings:
    return settings_for(settings, {"MODELREG_WEBHOOKS_ALLOW_NETWORKS": ALLOW,
                                   "MODELREG_WEBHOOKS_RETRY_FIRST_SECONDS": "0.2",
                                   "MODELREG_WEBHOOKS_RETRY_MAX_SECONDS": "1",
                                   "MODELREG_WEBHOOKS_TIMEOUT_SECONDS": "2",
                                   # longer than the minute-long outage, which must not disable
                                   "MODELREG_WEBHOOKS_DISABLE_AFTER_SECONDS": "300"})


@pytest.fixture(scope="module")
async def webhooks(settings: Settings, kafka: Kafka, pipeline: Any) -> AsyncIterator[ServiceApp]:
    from services.webhooks.app import create_app

    app = create_app(as_principal(_webhook_settings(settings), "webhooks"))
    await app.start()

    async def caught_up() -> bool:
        lags = [await app._lag(topic) for topic in TOPICS]  # noqa: SLF001 - the service's own view of its lag
        return all(lag is not None and not any(lag.values()) for lag in lags)

    # A new consumer group reads the session's topics from the start: what earlier tests left
    # there is consumed before any test here counts its seconds.
    await eventually(caught_up, timeout=300)
    yield app
    await app.stop()


async def _endpoint(db: asyncpg.Pool, settings: Settings, receiver: Receiver, path: str,
                    **kwargs: Any) -> store.Endpoint:
    async with db.acquire() as conn:
        endpoint = await manage.create(conn, _webhook_settings(settings), url=receiver.base + path,
                                       created_by="tests", **kwargs)
    receiver.secrets[path] = endpoint.secret
    return endpoint


async def _attempts(db: asyncpg.Pool, endpoint_id: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        """SELECT a.status_code, a.error, a.latency_ms, d.topic, d.model FROM webhook_attempts a
           JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1 ORDER BY a.id""", endpoint_id)


async def test_every_promotion_of_the_glob_arrives_once_in_order_across_an_outage(
        settings: Settings, kafka: Kafka, pipeline: Any, webhooks: ServiceApp, receiver: Receiver,
        db: asyncpg.Pool) -> None:
    name = unique_name("life")
    other = unique_name("life")  # promoted too, but not matched by the glob
    path = f"/hooks/{name}"
    endpoint = await _endpoint(db, settings, receiver, path, topics=["model.promoted"], models=[f"{name}*"])
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.92}, 2: {"auc": 0.95}, 3: {"auc": 0.97}}).run())
    qa_other = asyncio.create_task(QA(kafka, other, {1: {"auc": 0.93}}).run())
    try:
        await register(settings, kafka, name, 1)
        await register(settings, kafka, other, 1)
        await kafka.wait_for("model.promoted", promoted(name, 1, "production"))
        await eventually(lambda: len(receiver.bodies(path)) == 2, timeout=60)

        # Down: 503 with Retry-After while v2 is promoted, then the port closed while v3 is.
        receiver.mode = "503"
        await register(settings, kafka, name, 2)
        await kafka.wait_for("model.promoted", promoted(name, 2, "production"))
        await eventually(lambda: receiver.refused >= 2, timeout=60)
        await receiver.stop()
        await register(settings, kafka, name, 3)
        await kafka.wait_for("model.promoted", promoted(name, 3, "production"))
        await eventually(lambda: _refused_connections(db, endpoint.id), timeout=60)
        assert len(receiver.bodies(path)) == 2  # nothing got through while it was down
        receiver.mode = "up"
        await receiver.start()

        await eventually(lambda: len(receiver.bodies(path)) >= 6, timeout=60)
    finally:
        qa.cancel()
        qa_other.cancel()
        receiver.mode = "up"
        if receiver._runner is None:
            await receiver.start()

    await kafka.wait_for("model.promoted", promoted(other, 1, "production"))
    on_kafka = [s.event for s in kafka.matching("model.promoted", lambda s: s.data["name"] == name)]
    received = receiver.bodies(path)
    # Exactly once each, in the order promotion published them (v2 staging was retried while
    # v2 production waited behind it), and each is the registry's CloudEvent as published.
    assert [e["id"] for e in received] == [e["id"] for e in on_kafka]
    assert [(e["data"]["version"], e["data"]["to_stage"]) for e in received] == \
        [(1, "staging"), (1, "production"), (2, "staging"), (2, "production"), (3, "staging"), (3, "production")]
    assert [wid for p, wid, _ in receiver.accepted if p == path] == [e["id"] for e in on_kafka]  # webhook-id
    assert received == on_kafka and all(e["signingkey"] and e["signature"] for e in received)
    assert receiver.forged == 0
    assert all(e["data"]["name"] != other for e in received)

    # The delivery log: every attempt, the 503s and the refused connections among them (the
    # last attempt is logged just after the receiver answers it).
    await eventually(lambda: _all_delivered(db, endpoint.id), timeout=60)
    attempts = await _attempts(db, endpoint.id)
    statuses = [a["status_code"] for a in attempts]
    assert statuses.count(204) == 6
    assert statuses.count(503) >= 2 and all(a["error"] == "HTTP 503" for a in attempts if a["status_code"] == 503)
    assert any(a["status_code"] is None and a["error"] for a in attempts)
    assert all(a["latency_ms"] >= 0 and a["model"] == name for a in attempts)
    rows = await store.list_deliveries(db, endpoint_id=endpoint.id, with_attempts=True)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"delivered"}
    assert sum(len(r["attempt_log"]) for r in rows) == len(attempts)
    assert (await store.get_endpoint(db, endpoint.id)).failing_since is None  # a success stopped the clock


async def test_a_delivery_that_gets_through_brings_the_endpoints_waiting_retries_forward(
        settings: Settings, db: asyncpg.Pool, receiver: Receiver) -> None:
    # A paused endpoint: the running worker claims none of its deliveries; the attempts are
    # recorded here as the worker records them.
    endpoint = await _endpoint(db, settings, receiver, f"/forward/{uuid.uuid4().hex[:8]}", active=False)
    async with db.acquire() as conn:
        await store.record_deliveries(conn, [store.NewDelivery(endpoint.id, Message(uuid.uuid4(), "{}"), None,
                                                               "model.promoted", model) for model in ("m-a", "m-b")])
    rows = await db.fetch("SELECT id, message_id, model FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id",
                          endpoint.id)
    claimed = {r["model"]: store.Claimed(r["id"], endpoint.id, r["message_id"], "{}", "event", 0, endpoint.url,
                                         endpoint.secret, "standard") for r in rows}
    now = datetime.now(UTC)
    later = now + timedelta(hours=1)
    await store.record_attempt(db, claimed["m-b"], store.Attempt(now, 503, 3.0, "HTTP 503", None), delivered=False,
                               retry_at=later, endpoint_failing_since=now, disable_reason=None)
    back = now + timedelta(seconds=2)
    await store.record_attempt(db, claimed["m-a"], store.Attempt(back, 204, 3.0, None, None), delivered=True,
                               retry_at=None, endpoint_failing_since=None, disable_reason=None)
    due = await db.fetchrow("SELECT status, next_attempt_at FROM webhook_deliveries WHERE id = $1",
                            claimed["m-b"].id)
    assert (due["status"], due["next_attempt_at"]) == ("pending", back)  # not an hour later


async def _all_delivered(db: asyncpg.Pool, endpoint_id: uuid.UUID) -> bool:
    return {r["status"] for r in await store.list_deliveries(db, endpoint_id=endpoint_id)} == {"delivered"}


async def _refused_connections(db: asyncpg.Pool, endpoint_id: uuid.UUID) -> bool:
    return any(a["status_code"] is None for a in await _attempts(db, endpoint_id))


async def test_a_filter_by_stage_and_a_redelivery_with_the_same_webhook_id(
        settings: Settings, kafka: Kafka, pipeline: Any, webhooks: ServiceApp, receiver: Receiver,
        db: asyncpg.Pool) -> None:
    name = unique_name("life")
    path = f"/prod/{name}"
    endpoint = await _endpoint(db, settings, receiver, path, topics=["model.promoted"], models=[name],
                               stages=["production"])
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.92}}).run())
    try:
        await register(settings, kafka, name, 1)
        await kafka.wait_for("model.promoted", promoted(name, 1, "production"), timeout=60)
        await eventually(lambda: len(receiver.bodies(path)) == 1, timeout=60)
    finally:
        qa.cancel()
    [(_, webhook_id, body)] = [a for a in receiver.accepted if a[0] == path]
    assert (body["type"], body["data"]["to_stage"]) == ("model.promoted", "production")  # not the staging one

    [delivery] = await store.list_deliveries(db, endpoint_id=endpoint.id)
    [again] = await store.redeliver(db, requested_by="tests", delivery_id=delivery["id"])
    await eventually(lambda: len(receiver.bodies(path)) == 2, timeout=60)
    assert receiver.accepted[-1][1] == webhook_id  # the receiver's idempotency key is the same
    assert (await store.get_delivery(db, again))["kind"] == "replay"


async def test_ssrf_refused_at_creation_and_at_connect(settings: Settings, db: asyncpg.Pool,
                                                       receiver: Receiver) -> None:
    async with db.acquire() as conn:
        for url in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://169.254.169.254/latest/meta-data",
                    "http://[::1]/x", "http://10.0.0.1/x"):
            with pytest.raises(WebhookInputError, match="url: .*(loopback|link-local|private)"):
                await manage.create(conn, settings, url=url, created_by="tests")
        with pytest.raises(WebhookInputError, match="url: expected an http"):
            await manage.create(conn, settings, url="file:///etc/passwd", created_by="tests")
    # At connect: a name that resolves to loopback is refused by the resolver, a literal
    # address before any request; the receiver sees nothing.
    before = len(receiver.accepted) + receiver.forged
    async with Sender(allowed=(), timeout_seconds=2, max_response_bytes=4096) as sender:
        by_name = await sender.post(f"http://localhost:{receiver.port}/x", b"{}", {})
        literal = await sender.post(f"{receiver.base}/x", b"{}", {})
    assert by_name.status is None and "refused: localhost resolves to" in by_name.error and "loopback" in by_name.error
    assert literal.status is None and literal.error == "refused: 127.0.0.1 is a loopback address"
    assert len(receiver.accepted) + receiver.forged == before


async def test_the_time_limit_and_the_response_cap(receiver: Receiver) -> None:
    allowed = ssrf.parse_networks(ALLOW)
    async with Sender(allowed=allowed, timeout_seconds=0.5, max_response_bytes=4096) as sender:
        receiver.mode = "slow"
        try:
            slow = await sender.post(f"{receiver.base}/slow", b"{}", {})
        finally:
            receiver.mode = "huge"
        try:
            huge = await sender.post(f"{receiver.base}/huge", b"{}", {})
        finally:
            receiver.mode = "up"
    assert slow.status is None and slow.error == "no answer within 0.5s"
    assert huge.status == 200 and "response over 4096 bytes, cut" in huge.error and len(huge.excerpt) <= 1024


async def test_an_endpoint_failing_past_the_limit_is_disabled_and_audited(
        settings: Settings, kafka: Kafka, pipeline: Any, webhooks: ServiceApp, receiver: Receiver,
        db: asyncpg.Pool) -> None:
    name = unique_name("life")
    dead = f"http://127.0.0.1:{_free_port()}/gone"  # nothing listens there
    async with db.acquire() as conn:
        endpoint = await manage.create(conn, _webhook_settings(settings), url=dead, created_by="tests",
                                       models=[name])
    # It has been failing for longer than the service's limit (5 minutes here): the next failure disables it.
    await db.execute("UPDATE webhook_endpoints SET failing_since = now() - interval '10 minutes' WHERE id = $1",
                     endpoint.id)
    await register(settings, kafka, name, 1)
    audit = (await kafka.wait_for("registry.audit", lambda s: s.data["action"] == "webhook_disabled"
                                  and s.data["evidence"].get("endpoint_id") == str(endpoint.id), timeout=60))[0]
    assert audit.event["source"] == "modelreg/webhooks" and audit.event["signature"]
    assert "every attempt failed since" in audit.data["reason"]
    disabled = await store.get_endpoint(db, endpoint.id)
    assert disabled.status == "disabled" and disabled.disabled_reason == audit.data["reason"]
    deliveries = await store.list_deliveries(db, endpoint_id=endpoint.id)
    # Failed with it; except, never tried, what a batch recorded that had read the endpoints
    # before the disable (they wait for the endpoint to be enabled again).
    assert "failed" in {d["status"] for d in deliveries}
    assert all(d["status"] == "failed" or (d["status"] == "pending" and d["attempts"] == 0) for d in deliveries)


async def test_the_cli_manages_tests_and_replays(settings: Settings, webhooks: ServiceApp, receiver: Receiver,
                                                 db: asyncpg.Pool) -> None:
    """Each command a subprocess, as a person runs it (test_cli_commands.run: never a traceback)."""
    from tests.integration.test_cli_commands import run

    cli_settings = _webhook_settings(settings)
    path = f"/cli/{uuid.uuid4().hex[:8]}"
    done = await run(cli_settings, "webhooks", "create", "--url", receiver.base + path, "--event", "model.promoted",
                     "--models", "cli-*", "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    receiver.secrets[path] = created["secret"]
    assert created["secret"].startswith("whsec_") and created["topics"] == ["model.promoted"]

    done = await run(cli_settings, "webhooks", "list", "--json")
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and created["id"] in {e["id"] for e in listed}
    assert all("secret" not in e for e in listed)  # shown once, at creation

    done = await run(cli_settings, "webhooks", "test", created["id"])
    assert done.returncode == 0 and "delivered test" in done.stdout and "HTTP 204" in done.stdout, done.stderr
    assert receiver.bodies(path)[-1]["type"] == "webhook.test"

    done = await run(cli_settings, "webhooks", "deliveries", created["id"], "--attempts")
    assert done.returncode == 0 and "webhook.test" in done.stdout and "HTTP 204" in done.stdout

    [probe] = await store.list_deliveries(db, endpoint_id=uuid.UUID(created["id"]))
    # Person-readable refusals (exit 1: failed, 2: bad usage).
    for args, says, exit_code in [
        (("redeliver", str(probe["id"])), "is a test", 1),
        (("create", "--url", "http://127.0.0.1:1/x", "--event", "model.promote"),
         "unknown event type(s) model.promote", 1),
        (("create", "--url", "http://169.254.169.254/"), "link-local", 1),
        (("delete", str(uuid.uuid4())), "no webhook", 1),
        (("redeliver", "--endpoint", created["id"]), "--endpoint needs --since", 1),
        (("deliveries", "--since", "yesterday"), "neither RFC 3339", 2),
        (("test", "not-a-uuid"), "is not a webhook id", 2),
    ]:
        done = await run(cli_settings, "webhooks", *args)
        assert done.returncode == exit_code and says in done.stderr, (args, done.returncode, done.stderr)

    done = await run(cli_settings, "webhooks", "delete", created["id"])
    assert done.returncode == 0 and await store.get_endpoint(db, uuid.UUID(created["id"])) is None
    [(_, creator), (_, deleter)] = await _audited(db, created["id"])
    assert creator == deleter == created["created_by"]  # the CLI's actor (ops/$USER)


async def _audited(db: asyncpg.Pool, endpoint_id: str) -> list[tuple[str, str]]:
    """The endpoint's creation and deletion in audit_log, as (action, actor): signed by the
    webhooks service (its registry.audit records) and written by the audit writer."""
    async def both() -> list[asyncpg.Record]:
        rows = await db.fetch(
            """SELECT action, actor, name, source, evidence FROM audit_log
               WHERE action IN ('webhook_created', 'webhook_deleted') AND evidence->>'endpoint_id' = $1
               ORDER BY seq""", endpoint_id)
        return rows if len(rows) == 2 else []

    rows = await eventually(both, timeout=60)
    assert [r["action"] for r in rows] == ["webhook_created", "webhook_deleted"]
    assert {(r["name"], r["source"]) for r in rows} == {("_unknown", "modelreg/webhooks")}
    for row in rows:
        evidence = json.loads(row["evidence"]) if isinstance(row["evidence"], str) else row["evidence"]
        assert evidence["url"].startswith("http://127.0.0.1:") and "secret" not in evidence
    return [(r["action"], r["actor"]) for r in rows]


async def test_the_delivery_log_is_pruned_after_its_keep_time(settings: Settings, db: asyncpg.Pool,
                                                              receiver: Receiver) -> None:
    from services.webhooks.maintenance import Maintenance

    endpoint = await _endpoint(db, settings, receiver, f"/prune/{uuid.uuid4().hex[:8]}", active=False)
    async with db.acquire() as conn:
        await store.record_deliveries(conn, [store.NewDelivery(endpoint.id, Message(uuid.uuid4(), "{}"), None,
                                                               "model.promoted", f"m-{n}") for n in range(4)])
    ids = [r["id"] for r in await db.fetch("SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id",
                                           endpoint.id)]
    now = datetime.now(UTC)
    # delivered 40 and 31 days ago, failed 29 days ago, and one still pending from 40 days ago
    for delivery_id, (status, age) in zip(ids, [("delivered", 40), ("failed", 31), ("failed", 29),
                                                ("pending", 40)], strict=True):
        finished = now - timedelta(days=age) if status != "pending" else None
        await db.execute("""UPDATE webhook_deliveries SET status = $2, finished_at = $3, created_at = $4
                            WHERE id = $1""", delivery_id, status, finished, now - timedelta(days=age))
        await db.execute("""INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms)
                            VALUES ($1, 1, $2, 503, 1.0)""", delivery_id, now - timedelta(days=age))
    # A batch of one row per transaction: the loop goes on until a batch comes back short.
    # (Other tests' rows are younger; the running service's own round may take these first.)
    chores = Maintenance(db, keep=timedelta(days=30), clock=lambda: now, batch=1)
    await chores.prune()
    left = await db.fetch("SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id", endpoint.id)
    assert [r["id"] for r in left] == ids[2:]  # the two finished over 30 days ago, not the pending one
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts WHERE delivery_id = ANY($1)", ids[:2]) == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts WHERE delivery_id = ANY($1)", ids[2:]) == 2
    assert await chores.prune() == 0


@pytest.fixture(scope="module")
async def api(settings: Settings, pipeline: Any) -> AsyncIterator[ApiService]:
    async with running_api(_webhook_settings(settings), presign_seconds=120) as service:
        yield service


@pytest.fixture(scope="module")
async def tokens(db: asyncpg.Pool) -> dict[str, str]:
    run = uuid.uuid4().hex[:6]
    admin, _ = await auth.create(db, name=f"hooks-admin-{run}", role="admin")
    reader, _ = await auth.create(db, name=f"hooks-reader-{run}", role="reader")
    return {"admin": admin, "reader": reader}


async def test_the_http_api_is_for_admins(api: ApiService, tokens: dict[str, str], receiver: Receiver,
                                          webhooks: ServiceApp, db: asyncpg.Pool) -> None:
    path = f"/api/{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
        body = {"url": receiver.base + path, "events": ["model.promoted"], "stages": ["production"]}
        assert (await http.post("/api/v1/webhooks", json=body)).status_code == 401
        forbidden = await http.post("/api/v1/webhooks", json=body,
                                    headers={"Authorization": f"Bearer {tokens['reader']}"})
        assert forbidden.status_code == 403
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        created = await http.post("/api/v1/webhooks", json=body, headers=admin)
        assert created.status_code == 201, created.text
        hook = created.json()
        receiver.secrets[path] = hook["secret"]
        bad = await http.post("/api/v1/webhooks", json={"url": "http://169.254.169.254/"}, headers=admin)
        assert bad.status_code == 400 and "link-local" in bad.json()["detail"]
        shown = (await http.get(f"/api/v1/webhooks/{hook['id']}", headers=admin)).json()
        assert shown["stages"] == ["production"] and "secret" not in shown
        tested = await http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=admin)
        assert tested.status_code == 200 and tested.json()["status"] == "delivered"
        log = (await http.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=admin)).json()["items"]
        assert log[0]["attempt_log"][0]["status_code"] == 204
        paused = await http.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "disabled"}, headers=admin)
        assert paused.json()["status"] == "disabled" and paused.json()["disabled_reason"] == "disabled by an admin"
        assert (await http.delete(f"/api/v1/webhooks/{hook['id']}", headers=admin)).status_code == 204
        assert (await http.get(f"/api/v1/webhooks/{hook['id']}", headers=admin)).status_code == 404
    assert [actor for _, actor in await _audited(db, hook["id"])] == [hook["created_by"]] * 2
    assert hook["created_by"].startswith("hooks-admin-")  # the admin token's name


async def test_mlflows_webhook_api_and_payload(api: ApiService, tokens: dict[str, str], receiver: Receiver,
                                               webhooks: ServiceApp, settings: Settings, kafka: Kafka,
                                               pipeline: Any, db: asyncpg.Pool) -> None:
    base = "/api/3.0/mlflow/webhooks"
    name = unique_name("life")
    secret = "an-mlflow-shared-secret"
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
        unauthenticated = await http.get(base)
        assert unauthenticated.status_code == 401 and unauthenticated.json()["error_code"] == "UNAUTHENTICATED"
        # MLflow's client sends the token as basic auth's password (MLFLOW_TRACKING_USERNAME/PASSWORD).
        basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{tokens['admin']}".encode()).decode()}
        created = await http.post(base, headers=basic, json={
            "name": "deploy", "url": f"{receiver.base}/mlflow/{name}", "secret": secret,
            "events": [{"entity": "MODEL_VERSION", "action": "CREATED"},
                       {"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"}]})
        assert created.status_code == 200, created.text
        hook = created.json()["webhook"]
        assert hook["status"] == "ACTIVE" and hook["events"] == [{"entity": "MODEL_VERSION", "action": "CREATED"},
                                                                 {"entity": "MODEL_VERSION_ALIAS",
                                                                  "action": "CREATED"}]
        bearer = {"Authorization": f"Bearer {tokens['admin']}"}
        listed = (await http.get(base, headers=bearer, params={"max_results": 1000})).json()["webhooks"]
        assert hook["webhook_id"] in {w["webhook_id"] for w in listed}
        wrong = await http.post(base, headers=bearer, json={"name": "x", "url": f"{receiver.base}/m",
                                                            "events": [{"entity": "PROMPT", "action": "CREATED"}]})
        assert wrong.status_code == 400 and wrong.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        missing = await http.get(f"{base}/{uuid.uuid4()}", headers=bearer)
        assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        tested = (await http.post(f"{base}/{hook['webhook_id']}/test", headers=bearer, json={})).json()
        assert tested["result"]["success"] is True and tested["result"]["response_status"] == 200, tested

        qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.92}}).run())
        try:
            await register(settings, kafka, name, 1)
            await eventually(lambda: len([m for m in receiver.mlflow if name.encode() in m[1]]) == 2, timeout=60)
        finally:
            qa.cancel()
        messages = [(h, json.loads(b)) for h, b in receiver.mlflow if name.encode() in b]
        assert [(p["entity"], p["action"]) for _, p in messages] == [("model_version", "created"),
                                                                      ("model_version_alias", "created")]
        assert messages[1][1]["data"] == {"name": name, "alias": "champion", "version": "1"}
        for headers, payload in messages:
            raw = next(b for h, b in receiver.mlflow if h is headers)
            signed = f"{headers['x-mlflow-delivery-id']}.{headers['x-mlflow-timestamp']}.".encode() + raw
            expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
            assert headers["x-mlflow-signature"] == f"v1,{expected}"
            assert set(payload) == {"entity", "action", "timestamp", "data"}
        assert (await http.delete(f"{base}/{hook['webhook_id']}", headers=bearer)).json() == {}
    audited = await _audited(db, hook["webhook_id"])
    assert {actor for _, actor in audited} == {(await auth.identify(db, tokens["admin"])).name}


async def test_a_running_kafka_learns_a_principal_added_after_it_was_formatted(settings: Settings) -> None:
    """How a stack made before the webhooks service existed gets its SCRAM user
    (LocalStack.add_new_principals); `settings` connect as the admin super user."""
    from kafka.admin import ScramMechanism, UserScramCredentialDeletion

    from shared.kafka_acls import _admin
    from shared.kafka_users import ensure_scram_users

    if settings.kafka_security_protocol == "PLAINTEXT":
        pytest.fail("this test needs the SASL_SSL Kafka the local stack runs")
    user = f"probe-{uuid.uuid4().hex[:8]}"
    assert await ensure_scram_users(settings, {user: "a-probe-password-0123456789"}) == [user]
    try:
        assert await ensure_scram_users(settings, {user: "another-password-0123456789"}) == []  # kept as it is
        from tests.support import settings_for as with_env

        as_user = with_env(settings, {"KAFKA_SASL_USERNAME": user,
                                      "KAFKA_SASL_PASSWORD": "a-probe-password-0123456789"})
        from shared.broker import make_admin

        client = make_admin(as_user, "modelreg-probe")
        await client.start()  # authenticates with the new credential
        await client.close()
        wrong = make_admin(with_env(as_user, {"KAFKA_SASL_PASSWORD": "not-the-password-0123456789"}), "modelreg-probe")
        with pytest.raises(Exception, match="Unable to bootstrap"):  # SaslAuthenticationFailed, logged
            await wrong.start()
        with contextlib.suppress(Exception):
            await wrong.close()
    finally:
        admin = _admin(settings)
        try:
            admin.alter_user_scram_credentials([UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)])
        finally:
            admin.close()
