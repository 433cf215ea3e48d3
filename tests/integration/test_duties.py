"""Separation of duties through the running services (real Kafka, PostgreSQL, S3 and the HTTP
API): one identity cannot take its own version to production, an approver cannot move a
version before validation passed, a version rejected after it reached production is demoted
and the previous champion restored, and tokens are held to their model scope and expiry.
Rule `duties-*` of tests/policy.yaml: auc >= 0.90 (so `evaluator_not_author` is on), beat the
champion by 0.01, approvers alice and bob, one approval."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.api import auth
from services.api.app import build_asgi
from services.api.settings import ApiSettings
from shared.events import ModelRejected, ModelRejectedData, Reason, new_event
from shared.settings import Settings
from shared.storage import ObjectStore, parse_s3_uri
from tests.integration.conftest import running_api
from tests.integration.test_pipeline import QA, audit_of, evaluated, promoted, register, registered, requested
from tests.support import Kafka, eventually, for_model, put_artifact, signed, unique_name

RUN = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
async def client(settings: Settings, pipeline: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(settings, presign_seconds=60) as service, \
            httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        yield http


async def _token(db: asyncpg.Pool, role: auth.Role, name: str, models: tuple[str, ...] = ("*",)) -> dict[str, str]:
    token, _ = await auth.create(db, name=name, role=role, models=models)
    return {"Authorization": f"Bearer {token}"}


def _problem(response: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    if kind is not None:
        assert body["type"] == f"urn:modelreg:problem:{kind}", body
    return body


def _upload(seed: int) -> dict[str, Any]:
    return {"artifact": ("model.pkl", pickle.dumps({"weights": [seed, 0.5], "run": RUN}), "application/octet-stream")}


async def test_a_single_token_can_no_longer_take_its_own_version_to_production(
        client: httpx.AsyncClient, db: asyncpg.Pool, kafka: Kafka) -> None:
    name = unique_name("duties-solo")
    alice = await _token(db, "admin", "alice")  # may do everything, and is a listed approver
    answer = await client.post(f"/api/v1/models/{name}/versions", files=_upload(1), headers=alice)
    assert answer.status_code == 202, answer.text
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging", "policy"))

    # alice vouches for her own version: recorded, but it does not count
    mine = await client.post(f"/api/v1/models/{name}/versions/1/evaluations", headers=alice,
                             json={"suite": "offline-eval", "metrics": {"auc": 0.99}, "passed": True})
    assert mine.status_code == 202, mine.text
    ignored = (await kafka.wait_for("registry.audit", audit_of(name, "ignored_evaluation", 1)))[0]
    assert ignored.data["actor"] == "alice" and "evaluator_not_author" in ignored.data["reason"]
    assert ignored.data["evidence"]["registered_by"] == "alice"
    held = (await kafka.wait_for("registry.audit", audit_of(name, "held", 1)))[0]
    assert "from alice, who registered this version, do not count" in held.data["reason"]
    assert held.data["evidence"]["ignored_evaluations"][0]["evaluator"] == "alice"

    # and she cannot approve it either
    asked = await client.post(f"/api/v1/models/{name}/versions/1/promotion-requests", headers=alice,
                              json={"to_stage": "production", "reason": "ship it"})
    assert asked.status_code == 202, asked.text
    refused = (await kafka.wait_for("registry.audit", audit_of(name, "promotion_refused", 1)))[0]
    assert refused.data["actor"] == "alice" and "separation of duties" in refused.data["reason"]
    explained = (await client.get(f"/api/v1/models/{name}/versions/1/explain")).json()
    assert explained["would_promote"] is False and explained["stage"] == "staging"

    # an independent evaluator's result counts: the same version now goes to production
    qa = await _token(db, "evaluator", f"qa-{RUN}")
    theirs = await client.post(f"/api/v1/models/{name}/versions/1/evaluations", headers=qa,
                               json={"suite": "offline-eval", "metrics": {"auc": 0.93}, "passed": True})
    assert theirs.status_code == 202, theirs.text
    crowned = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy")))[0]
    # promoted on qa's 0.93, not alice's 0.99; nothing promoted it before qa's result
    gates = {g["gate"]: g for g in crowned.data["evidence"]["gates"]}
    assert gates["threshold:auc"]["actual"] == {"offline-eval": 0.93}
    assert len(kafka.matching("model.promoted", promoted(name, 1, "production"))) == 1


async def test_roles_separate_register_evaluate_and_approve(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    name = unique_name("duties-roles")
    publisher = await _token(db, "publisher", f"pipeline-{RUN}")
    evaluator = await _token(db, "evaluator", f"qa2-{RUN}")
    approver = await _token(db, "approver", "bob")
    evaluation = {"suite": "offline-eval", "metrics": {"auc": 0.95}}
    moved = {"to_stage": "production", "reason": "roles"}
    url = f"/api/v1/models/{name}/versions"
    assert "role evaluator" in _problem(await client.post(f"{url}/1/evaluations", json=evaluation,
                                                          headers=publisher), 403, "forbidden")["detail"]
    _problem(await client.post(f"{url}/1/evaluations", json=evaluation, headers=approver), 403, "forbidden")
    _problem(await client.post(url, files=_upload(2), headers=evaluator), 403, "forbidden")
    _problem(await client.post(url, files=_upload(2), headers=approver), 403, "forbidden")
    _problem(await client.post(f"{url}/1/promotion-requests", json=moved, headers=evaluator), 403, "forbidden")
    _problem(await client.post(f"{url}/1/promotion-requests", json=moved, headers=publisher), 403, "forbidden")


async def test_an_approvers_early_manual_move_is_refused(settings: Settings, kafka: Kafka, pipeline: Any) -> None:
    """The request overtakes the registration (held until the version exists) and is judged
    before validation has said anything: refused, for either stage."""
    name = unique_name("duties-early")
    await kafka.publish("promotion.requested", requested(name, 1, "production", "alice"))
    await kafka.publish("promotion.requested", requested(name, 1, "staging", "bob"))
    await register(settings, kafka, name, 1)
    refusals = await kafka.wait_for("registry.audit", audit_of(name, "promotion_refused", 1), count=2)
    assert {(r.data["actor"], r.data["to_stage"]) for r in refusals} == {("alice", "production"), ("bob", "staging")}
    for refusal in refusals:
        assert "has not passed validation yet" in refusal.data["reason"], refusal.data
    # validation then passes and the policy, not the early request, moves it to staging
    staged = await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    assert staged[0].data["reason"] == "policy"
    assert not kafka.matching("model.promoted", promoted(name, 1, "production"))


async def test_an_unvalidated_version_is_neither_moved_nor_downloadable_through_the_api(
        settings: Settings, client: httpx.AsyncClient, db: asyncpg.Pool, kafka: Kafka) -> None:
    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("true",))

    name = unique_name("duties-unsafe")
    artifact = await put_artifact(settings, f"inbox/{name}/evil.pkl", pickle.dumps(Exploit()))
    await kafka.publish("model.registered", registered(name, artifact))
    await kafka.wait_for("model.rejected", for_model(name, 1))
    await eventually(lambda: db.fetchval("SELECT status = 'rejected' FROM view_versions WHERE name = $1", name))
    bob = await _token(db, "approver", "bob")
    for stage in ("staging", "production"):
        refused = _problem(await client.post(f"/api/v1/models/{name}/versions/1/promotion-requests", headers=bob,
                                             json={"to_stage": stage, "reason": "early"}), 409, "not-validated")
        assert "has not passed validation (status rejected)" in refused["detail"]
    link = _problem(await client.get(f"/api/v1/models/{name}/versions/1/artifact"), 409, "not-validated")
    assert "only validated artifacts are downloadable" in link["detail"]
    page = (await client.get(f"/models/{name}/versions/1")).text
    assert ">Download</a>" not in page and "only artifacts that passed validation" in page
    assert (await client.get(f"/models/{name}/versions/1/download")).status_code == 409
    # moving it down is still allowed: the request is accepted
    down = await client.post(f"/api/v1/models/{name}/versions/1/promotion-requests", headers=bob,
                             json={"to_stage": "archived", "reason": "clean up"})
    assert down.status_code == 202, down.text


async def test_a_late_rejection_demotes_the_champion_and_restores_the_previous_one(
        settings: Settings, kafka: Kafka, pipeline: Any, db: asyncpg.Pool) -> None:
    name = unique_name("duties-late")
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.92}, 2: {"auc": 0.95}}).run())
    try:
        for version in (1, 2):
            await register(settings, kafka, name, version)
            await kafka.wait_for("model.promoted", promoted(name, version, "production", "policy"))
    finally:
        qa.cancel()
    v2 = (await kafka.wait_for("model.ingested", for_model(name, 2)))[0]
    # validation finds v2 unsafe after all (a re-scan, a newer scanner): signed as validation signs
    late = new_event(ModelRejected, ModelRejectedData(name=name, version=2, reasons=[
        Reason(code="unsafe_pickle", message="disallowed import posix.system in model.pkl")]),
        source="modelreg/validation", correlationid=uuid.UUID(v2.event["correlationid"]))
    await kafka.publish_raw("model.rejected", signed(settings, late, service="validation"), key=name)

    demoted = (await kafka.wait_for("model.demoted", for_model(name, 2)))[0]
    assert (demoted.data["from_stage"], demoted.data["to_stage"], demoted.data["reason"]) == \
        ("production", "none", "rejected")
    assert "posix.system" in demoted.data["evidence"]["detail"]
    assert "previous champion restored" in demoted.data["evidence"]["detail"]
    restored = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "rollback")))[0]
    assert restored.data["evidence"]["rolled_back"] == 2 and restored.data["previous_champion"] == 2
    trail = await kafka.wait_for("registry.audit", audit_of(name, "demoted", 2))
    assert trail[0].data["reason"] == "rejected"
    assert trail[0].data["evidence"]["reasons"][0]["code"] == "unsafe_pickle"
    assert await eventually(lambda: db.fetchval("SELECT champion = 1 FROM view_models WHERE name = $1", name))
    assert await eventually(lambda: db.fetchval(
        "SELECT blocked = 'rejected' AND stage = 'none' FROM promotion_versions WHERE name = $1 AND version = 2",
        name))


async def test_a_version_quarantined_in_staging_leaves_staging_at_once(
        settings: Settings, kafka: Kafka, pipeline: Any, db: asyncpg.Pool) -> None:
    name = unique_name("duties-tamper")
    await register(settings, kafka, name, 1)
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))
    location = parse_s3_uri(ingested.data["artifact"]["uri"])
    async with ObjectStore(settings) as store:
        await (await store.boto()).put_object(
            Bucket=location.bucket, Key=location.key, Body=b"swapped after validation")
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.99}))  # would promote it
    demoted = (await kafka.wait_for("model.demoted", for_model(name, 1)))[0]
    assert (demoted.data["from_stage"], demoted.data["to_stage"], demoted.data["reason"]) == \
        ("staging", "none", "quarantined")
    assert "rejected while in staging" in demoted.data["evidence"]["detail"]
    assert demoted.data["evidence"]["expected_sha256"] == ingested.data["artifact"]["sha256"]
    assert not kafka.matching("model.promoted", promoted(name, 1, "production"))
    assert await eventually(lambda: db.fetchval(
        "SELECT stage = 'none' AND blocked = 'quarantined' FROM promotion_versions WHERE name = $1", name))


async def test_tokens_are_held_to_their_model_scope_and_expiry(client: httpx.AsyncClient, db: asyncpg.Pool,
                                                               settings: Settings, kafka: Kafka) -> None:
    mine, theirs = unique_name(f"duties-{RUN}-fraud"), unique_name(f"duties-{RUN}-churn")
    scoped = await _token(db, "publisher", f"fraud-ci-{RUN}", models=(f"duties-{RUN}-fraud*",))
    inside = await client.post(f"/api/v1/models/{mine}/versions", files=_upload(3), headers=scoped)
    assert inside.status_code == 202, inside.text
    outside = _problem(await client.post(f"/api/v1/models/{theirs}/versions", files=_upload(3), headers=scoped),
                       403, "out-of-scope")
    assert f"limited to models duties-{RUN}-fraud*" in outside["detail"]
    # reads with the token are scoped too, every route that names a model
    await kafka.wait_for("model.promoted", promoted(mine, 1, "staging"))
    # The read model follows registry.audit: the model is there once the audit writer applied it.
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM view_models WHERE name = $1", mine))
    assert (await client.get(f"/api/v1/models/{mine}", headers=scoped)).status_code == 200
    for path in (f"/api/v1/models/{theirs}", f"/api/v1/models/{theirs}/versions/1",
                 f"/api/v1/models/{theirs}/versions/1/explain", f"/api/v1/models/{theirs}/versions/1/artifact",
                 f"/api/v1/models/{theirs}/production", f"/api/v1/audit?model={theirs}"):
        _problem(await client.get(path, headers=scoped), 403, "out-of-scope")
    assert (await client.get(f"/api/v1/audit?model={mine}", headers=scoped)).status_code == 200
    await client.post(f"/api/v1/models/{theirs}/versions", files=_upload(4),
                      headers=await _token(db, "publisher", f"churn-ci-{RUN}"))
    await kafka.wait_for("model.promoted", promoted(theirs, 1, "staging"))
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM view_models WHERE name = $1", theirs))
    everyone = (await client.get("/api/v1/models", params={"prefix": f"duties-{RUN}-"})).json()["items"]
    assert {mine, theirs} <= {m["name"] for m in everyone}
    listed = (await client.get("/api/v1/models", params={"prefix": f"duties-{RUN}-"}, headers=scoped)).json()
    assert [m["name"] for m in listed["items"]] == [mine]  # a scoped token lists only its models
    trail = (await client.get("/api/v1/audit", params={"order": "desc", "limit": 500}, headers=scoped)).json()
    assert trail["items"] and {a["name"] for a in trail["items"]} == {mine}

    expired = await _token(db, "reader", f"old-{RUN}")
    token_id = await db.fetchval("SELECT max(id) FROM api_tokens WHERE name = $1", f"old-{RUN}")
    assert (await client.get(f"/api/v1/models/{mine}", headers=expired)).status_code == 200
    await db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", token_id)
    gone = _problem(await client.get(f"/api/v1/models/{mine}", headers=expired), 401)
    assert "expired at" in gone["detail"] and gone["type"] == "urn:modelreg:problem:unauthorized"
    login = await client.post("/ui/login", data={"token": expired["Authorization"].split()[1], "next": "/"})
    assert login.status_code == 401 and "expired" in login.text  # the web UI takes it no more than the API


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DATABASE_URL": settings.dsn})


async def test_token_cli_creates_and_lists_scope_and_expiry(settings: Settings, db: asyncpg.Pool) -> None:
    name = f"scoped-{RUN}"
    made = await asyncio.to_thread(_cli, settings, "token", "create", "--role", "evaluator", "--name", name,
                                   "--models", "fraud-*", "--models", "churn-a,churn-b", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    assert auth.looks_like_token(made.stdout.strip()) and "fraud-*, churn-a, churn-b" in made.stderr
    default = await asyncio.to_thread(_cli, settings, "token", "create", "--role", "reader", "--name", f"{name}-d")
    assert default.returncode == 0, default.stderr
    listed = await asyncio.to_thread(_cli, settings, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    tokens = {t["name"]: t for t in map(json.loads, listed.stdout.splitlines())}
    assert tokens[name]["models"] == ["fraud-*", "churn-a", "churn-b"] and tokens[name]["role"] == "evaluator"
    days = await db.fetchval("SELECT extract(epoch FROM expires_at - created_at) / 86400 FROM api_tokens "
                             "WHERE name = $1", name)
    assert round(days) == 30
    assert await db.fetchval("SELECT round(extract(epoch FROM expires_at - created_at) / 86400) FROM api_tokens "
                             "WHERE name = $1", f"{name}-d") == 90
    assert tokens[f"{name}-d"]["models"] == ["*"]
    table = await asyncio.to_thread(_cli, settings, "token", "list")
    assert "MODELS" in table.stdout and "EXPIRES" in table.stdout and "fraud-*,churn-a,churn-b" in table.stdout
    for bad in (("--models", "Fraud/*"), ("--expires", "soon"), ("--expires", "0d")):
        refused = await asyncio.to_thread(_cli, settings, "token", "create", "--role", "reader", "--name", "x", *bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr


async def _page_as(client: httpx.AsyncClient, path: str, token: dict[str, str] | None) -> str:
    """The page as a browser signed in with `token` (through the login form's cookie) sees it."""
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as browser:
        if token is not None:
            signed_in = await browser.post("/ui/login", data={"token": token["Authorization"].split()[1],
                                                             "next": path})
            assert signed_in.status_code == 303, signed_in.text
        page = await browser.get(path)
        assert page.status_code == 200, page.text
        return page.text


async def test_the_approvers_view_shows_the_buttons_and_the_audit_names_the_approver(
        settings: Settings, client: httpx.AsyncClient, db: asyncpg.Pool, kafka: Kafka) -> None:
    name = unique_name("duties-ui")
    await register(settings, kafka, name, 1)  # no QA answers: it waits in staging
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging", "policy"))
    await eventually(lambda: db.fetchval("SELECT stage = 'staging' AND status = 'validated' FROM view_versions "
                                         "WHERE name = $1", name))
    path = f"/models/{name}/versions/1"
    bob = await _token(db, "approver", "bob")
    for nobody in (None, await _token(db, "reader", f"viewer-{RUN}"), await _token(db, "evaluator", f"qa3-{RUN}")):
        page = await _page_as(client, path, nobody)
        assert 'class="promote"' not in page and "Approve for production" not in page
    elsewhere = await _token(db, "approver", "alice", models=("fraud-*",))  # an approver, not for this model
    assert 'class="promote"' not in await _page_as(client, path, elsewhere)

    page = await _page_as(client, path, bob)
    assert "Approve for production" in page and 'data-approver="bob"' in page
    assert "Gates failing: suite:offline-eval, threshold:auc" in page  # the gates /explain reports
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as browser:
        await browser.post("/ui/login", data={"token": bob["Authorization"].split()[1], "next": path})
        foreign = await browser.post(f"{path}/promote", data={"to_stage": "production", "reason": "x"},
                                     headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        approved = await browser.post(f"{path}/promote", data={"to_stage": "production", "reason": "looks right"})
        assert approved.status_code == 303 and approved.headers["location"].startswith(path)
    crowned = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "manual")))[0]
    assert crowned.data["evidence"]["requested_by"] == "bob"
    audit = (await kafka.wait_for("registry.audit", audit_of(name, "promoted", 1),
                                  count=2))
    manual = [a for a in audit if a.data["to_stage"] == "production"][0]
    assert manual.data["actor"] == "bob" and manual.data["evidence"]["request_reason"] == "looks right"
    assert len(kafka.matching("promotion.requested", for_model(name, 1))) == 1  # the foreign post published nothing


async def test_with_closed_reads_the_web_ui_holds_a_token_to_its_scope(settings: Settings, db: asyncpg.Pool) -> None:
    """MODELREG_API_OPEN_READS=false: a scoped token's cookie opens its models' pages only."""
    mine, theirs = f"duties-{RUN}-fraud-ui", f"duties-{RUN}-churn-ui"
    reader = await _token(db, "reader", f"fraud-viewer-{RUN}", models=(f"duties-{RUN}-fraud*",))
    app = build_asgi(settings, ApiSettings(open_reads=False), publisher=_NoPublishing())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as browser:
            signed_in = await browser.post("/ui/login", data={"token": reader["Authorization"].split()[1],
                                                              "next": "/"})
            assert signed_in.status_code == 303
            # an unknown model in scope: the page says so (404), it is not refused
            assert (await browser.get(f"/models/{mine}")).status_code == 404
            refused = await browser.get(f"/models/{theirs}")
            assert refused.status_code == 403 and "is not one of them" in refused.text
            assert (await browser.get(f"/ui/state?model={theirs}")).status_code == 403
            assert (await browser.get(f"/ui/state?model={mine}")).status_code == 200


class _NoPublishing:
    async def register(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        raise AssertionError("not expected")

    evaluate = request_promotion = register
