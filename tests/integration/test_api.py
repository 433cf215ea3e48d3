"""The HTTP API on the real stack: a model's life (three versions, a rollback) is played through
Kafka by the real services, then every endpoint is called on a real uvicorn server; writes go
through Kafka and come back as audit records. Also the people's CLI over the same database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from services.api import auth
from services.api.app import ApiService, build_asgi
from services.api.settings import ApiSettings
from shared.settings import Settings
from tests.integration.conftest import running_api
from tests.support import Kafka, Seen, cloudevent, eventually, for_model, put_artifact, unique_name

RUN = uuid.uuid4().hex[:6]
NAME = f"life-api{RUN}-main"          # the policy's "life-*" rule: auc >= 0.90, beat the champion by 0.01
OTHER = f"life-api{RUN}-other"        # a second model, one version
SCORES = {1: 0.92, 2: 0.95, 3: 0.925}  # v3 beats neither v2 nor (after the rollback) v1 by 0.01: held


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _artifact_bytes(seed: int) -> bytes:
    return pickle.dumps({"weights": [seed * 0.1, 0.2], "bias": seed, "run": RUN})


async def _register(settings: Settings, kafka: Kafka, name: str, seed: int) -> dict[str, Any]:
    artifact = await put_artifact(settings, f"inbox/{name}/{seed}.pkl", _artifact_bytes(seed))
    event = cloudevent("model.registered", {"name": name, "artifact": dict(artifact, format="pickle"),
                                            "registered_by": "pipelines/train", "metrics": {"auc": 0.5},
                                            "tags": {"team": "risk", "seed": str(seed)}})
    await kafka.publish("model.registered", event)
    return artifact


async def _qa(kafka: Kafka, name: str, version: int, auc: float, *, environment: str = "offline",
              suite: str = "offline-eval") -> None:
    await kafka.publish("metrics.evaluated", cloudevent(
        "metrics.evaluated", {"name": name, "version": version, "suite": suite, "environment": environment,
                              "metrics": {"auc": auc}, "passed": True, "evaluator": "tests/qa"}, source="qa/tests"))


def _promoted(name: str, version: int, to_stage: str, reason: str | None = None) -> Any:
    return lambda s: (for_model(name, version)(s) and s.data["to_stage"] == to_stage
                      and (reason is None or s.data["reason"] == reason))


async def _serves(client: httpx.AsyncClient, name: str, version: int) -> httpx.Response | None:
    answer = await client.get(f"/api/v1/models/{name}/production")
    return answer if answer.status_code == 200 and answer.json()["version"] == version else None


async def _champion(db: asyncpg.Pool, name: str, version: int) -> bool:
    return bool(await db.fetchval("SELECT champion = $2 FROM view_models WHERE name = $1", name, version))


@pytest.fixture(scope="module")
async def api(settings: Settings, pipeline: Any) -> AsyncIterator[ApiService]:
    async with running_api(settings, presign_seconds=120) as service:
        yield service


@pytest.fixture(scope="module")
async def client(api: ApiService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
async def life(settings: Settings, kafka: Kafka, db: asyncpg.Pool, client: httpx.AsyncClient) -> dict[str, Any]:
    """v1 and v2 reach production in turn, v3 is held in staging, v2's production metrics roll it
    back to v1. Records the production endpoint's answers along the way."""
    seen: dict[str, Any] = {"before": datetime.now(UTC), "artifacts": {}}
    await _register(settings, kafka, OTHER, 9)
    for version in (1, 2, 3):
        seen["artifacts"][version] = await _register(settings, kafka, NAME, version)
        await kafka.wait_for("model.promoted", _promoted(NAME, version, "staging"))
        await _qa(kafka, NAME, version, SCORES[version])
        if version < 3:
            await kafka.wait_for("model.promoted", _promoted(NAME, version, "production"))
            await eventually(lambda v=version: _champion(db, NAME, v))
            # the API's cache drops the old champion when PostgreSQL's notification arrives
            answer = await eventually(lambda v=version: _serves(client, NAME, v), timeout=10)
            seen[f"etag{version}"] = answer.headers["etag"]
            seen[f"v{version}_crowned"] = datetime.now(UTC)
    await kafka.wait_for("registry.audit", lambda s: for_model(NAME, 3)(s) and s.data["action"] == "held")
    seen["before_rollback"] = datetime.now(UTC)
    await _qa(kafka, NAME, 2, 0.80, environment="production", suite="live-monitor")
    await kafka.wait_for("model.promoted", _promoted(NAME, 1, "production", "rollback"))
    await eventually(lambda: _champion(db, NAME, 1))
    await eventually(lambda: db.fetchval("SELECT count(*) = 4 FROM view_evaluations WHERE name = $1", NAME))
    await eventually(lambda: _serves(client, NAME, 1), timeout=10)
    return seen


async def _token(db: asyncpg.Pool, role: auth.Role, name: str) -> str:
    token, _ = await auth.create(db, name=name, role=role)
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["instance"] and body["type"]
    return body


# ---------------------------------------------------------------------------- reads


async def test_models_are_searched_and_paged(client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    found = (await client.get("/api/v1/models", params={"prefix": f"life-api{RUN}"})).json()
    assert [m["name"] for m in found["items"]] == [NAME, OTHER] and found["next_cursor"] is None
    item = found["items"][0]
    assert item["champion"] == 1 and item["latest_version"] == 3 and item["version_count"] == 3
    assert item["stages"] == {"production": 1, "staging": 1, "none": 1}
    for params in ({"tag": "team=risk"}, {"stage": "staging"}, {"tag": "seed=3", "prefix": "life-"}):
        names = [m["name"] for m in (await client.get("/api/v1/models", params=params)).json()["items"]]
        assert NAME in names, params
    for params in ({"tag": "team=nobody"}, {"prefix": "zzz"}):
        assert NAME not in [m["name"] for m in (await client.get("/api/v1/models", params=params)).json()["items"]]

    mine = {"prefix": f"life-api{RUN}", "limit": 1}
    first = (await client.get("/api/v1/models", params=mine)).json()
    assert [m["name"] for m in first["items"]] == [NAME] and first["next_cursor"]
    second = (await client.get("/api/v1/models", params={**mine, "cursor": first["next_cursor"]})).json()
    assert [m["name"] for m in second["items"]] == [OTHER] and second["next_cursor"] is None
    names, cursor = [], None
    for _ in range(100):  # every model of the session, a page of one at a time
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/models", params=params)).json()
        names += [m["name"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert {NAME, OTHER} <= set(names) and len(names) == len(set(names)) and names == sorted(names)

    tampered = first["next_cursor"][:-2] + ("xx" if not first["next_cursor"].endswith("xx") else "yy")
    _is_problem(await client.get("/api/v1/models", params={**mine, "cursor": tampered}), 400)
    _is_problem(await client.get("/api/v1/models", params={"cursor": first["next_cursor"], "stage": "none"}), 400)
    _is_problem(await client.get("/api/v1/models", params={"limit": 501}), 400)
    _is_problem(await client.get("/api/v1/models", params={"tag": "no-equals"}), 400)


async def test_a_model_with_its_versions_champion_and_rule(client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    doc = (await client.get(f"/api/v1/models/{NAME}")).json()
    assert doc["champion"] == 1 and doc["chart_metric"] == "auc"
    assert doc["rule"]["match"] == "life-*" and doc["rule"]["thresholds"] == {"auc": ">= 0.9"}
    assert doc["policy_revision"].startswith("sha256:")
    versions = {v["version"]: v for v in doc["versions"]}
    assert {n: (v["stage"], v["status"], v["is_champion"]) for n, v in versions.items()} == {
        1: ("production", "validated", True), 2: ("none", "validated", False), 3: ("staging", "validated", False)}
    assert {n: v["key_metrics"]["auc"] for n, v in versions.items()} == SCORES  # QA results, not production ones
    _is_problem(await client.get("/api/v1/models/no-such-model"), 404)
    _is_problem(await client.get("/api/v1/models/Not_A_Name"), 400)


async def test_a_version_in_full(client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    doc = (await client.get(f"/api/v1/models/{NAME}/versions/2")).json()
    assert doc["artifact"]["sha256"] == life["artifacts"][2]["sha256"]
    assert doc["artifact"]["uri"].startswith("s3://")
    assert doc["artifact"]["size_bytes"] == life["artifacts"][2]["size_bytes"]
    assert doc["artifact"]["source_uri"] == life["artifacts"][2]["uri"]
    assert {c["name"] for c in doc["checks"]} >= {"checksum", "pickle_safety"}
    assert [(e["suite"], e["environment"]) for e in doc["evaluations"]] == [
        ("offline-eval", "offline"), ("live-monitor", "production")]
    assert [(c["from_stage"], c["to_stage"], c["reason"]) for c in doc["stage_history"]] == [
        ("none", "staging", "policy"), ("staging", "production", "policy"), ("production", "none", "rollback")]
    assert doc["tags"] == {"team": "risk", "seed": "2"} and doc["registered_by"] == "pipelines/train"
    assert doc["is_champion"] is False and doc["correlation_id"]
    _is_problem(await client.get(f"/api/v1/models/{NAME}/versions/99"), 404)
    _is_problem(await client.get(f"/api/v1/models/{NAME}/versions/0"), 400)
    _is_problem(await client.get(f"/api/v1/models/{NAME}/versions/99999999999"), 400)


async def test_production_for_deployment_systems(client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    url = f"/api/v1/models/{NAME}/production"
    now = await client.get(url)
    assert now.status_code == 200 and now.json()["version"] == 1
    assert now.json()["artifact"]["sha256"] == life["artifacts"][1]["sha256"]
    tag = now.headers["etag"]
    assert tag not in (life["etag1"], life["etag2"])  # v1 again, but crowned anew: pollers must notice
    assert life["etag1"] != life["etag2"]
    unchanged = await client.get(url, headers={"If-None-Match": tag})
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == tag and not unchanged.content
    assert (await client.get(url, headers={"If-None-Match": life["etag2"]})).status_code == 200

    then = await client.get(url, params={"at": _iso(life["v2_crowned"])})
    assert then.status_code == 200 and then.json()["version"] == 2 and then.json()["until"] is not None
    assert (await client.get(url, params={"at": _iso(life["v1_crowned"])})).json()["version"] == 1
    assert (await client.get(url, params={"at": _iso(datetime.now(UTC))})).json()["version"] == 1
    _is_problem(await client.get(url, params={"at": _iso(life["before"])}), 404)
    _is_problem(await client.get(url, params={"at": "yesterday"}), 400)
    _is_problem(await client.get(url, params={"at": "2026-01-01T00:00:00"}), 400)  # no offset
    _is_problem(await client.get("/api/v1/models/no-such-model/production"), 404)


async def test_explain_shows_why_a_held_version_is_held(client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    doc = (await client.get(f"/api/v1/models/{NAME}/versions/3/explain")).json()
    assert doc["stage"] == "staging" and doc["would_promote"] is False and doc["champion_version"] == 1
    gates = {g["gate"]: g for g in doc["gates"]}
    assert gates["suite:offline-eval"]["passed"] and gates["threshold:auc"]["passed"]
    assert gates["threshold:auc"]["results"][0]["value"] == 0.925
    rival = gates["champion:auc"]
    assert rival["passed"] is False and "does not beat" in rival["detail"]
    assert rival["champion"]["version"] == 1 and rival["champion"]["value"] == 0.92
    assert doc["summary"].startswith("held")
    rolled = (await client.get(f"/api/v1/models/{NAME}/versions/2/explain")).json()
    assert rolled["blocked"] == "rolled_back" and rolled["would_promote"] is False


async def test_a_presigned_url_downloads_the_artifact(client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    link = (await client.get(f"/api/v1/models/{NAME}/versions/3/artifact")).json()
    assert link["expires_in"] == 120 and link["archived"] is False and link["uri"].startswith("s3://")
    async with httpx.AsyncClient(timeout=30) as outside:
        body = (await outside.get(link["url"])).content
    assert body == _artifact_bytes(3)
    assert hashlib.sha256(body).hexdigest() == link["sha256"] == life["artifacts"][3]["sha256"]
    _is_problem(await client.get(f"/api/v1/models/{NAME}/versions/42/artifact"), 404)


async def test_the_audit_log_filtered_and_paged(client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    mine = (await client.get("/api/v1/audit", params={"model": NAME, "limit": 500})).json()["items"]
    assert {"ingested", "validated", "promoted", "demoted", "evaluated", "held"} <= {a["action"] for a in mine}
    assert [a["seq"] for a in mine] == sorted(a["seq"] for a in mine)
    promoted = (await client.get("/api/v1/audit", params={"model": NAME, "version": 1, "action": "promoted"})).json()
    assert [(a["from_stage"], a["to_stage"]) for a in promoted["items"]] == [
        ("none", "staging"), ("staging", "production"), ("none", "production")]
    later = (await client.get("/api/v1/audit", params={"model": NAME, "since": _iso(life["before_rollback"])})).json()
    assert {a["action"] for a in later["items"]} >= {"demoted", "promoted"} and "ingested" not in \
        {a["action"] for a in later["items"]}
    earlier = (await client.get("/api/v1/audit", params={"model": NAME, "until": _iso(life["before"])})).json()
    assert earlier["items"] == []

    pages, cursor = [], None
    while True:
        page = (await client.get("/api/v1/audit", params={"model": NAME, "limit": 5, "order": "desc",
                                                          **({"cursor": cursor} if cursor else {})})).json()
        pages += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [a["seq"] for a in pages] == sorted((a["seq"] for a in mine), reverse=True)
    _is_problem(await client.get("/api/v1/audit", params={"since": "last tuesday"}), 400)
    _is_problem(await client.get("/api/v1/audit", params={"action": "DROP TABLE"}), 400)


# ---------------------------------------------------------------------------- writes and tokens


async def test_writes_need_a_token_of_the_right_role(client: httpx.AsyncClient, db: asyncpg.Pool, kafka: Kafka,
                                                    settings: Settings, life: dict[str, Any]) -> None:
    url = f"/api/v1/models/{NAME}/versions/3/promotion-requests"
    body = {"to_stage": "production", "reason": "the API integration test"}
    anonymous = await client.post(url, json=body)
    _is_problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    _is_problem(await client.post(url, json=body, headers={"Authorization": "Bearer mr_" + "x" * 43}), 401)
    _is_problem(await client.post(url, json=body, headers={"Authorization": "Basic Ym9iOnNlY3JldA=="}), 401)

    reader = await _token(db, "reader", f"reader-{RUN}")
    refused = _is_problem(await client.post(url, json=body, headers=_bearer(reader)), 403)
    assert "approver" in refused["detail"]
    publisher = await _token(db, "publisher", f"pipeline-{RUN}")
    _is_problem(await client.post(url, json=body, headers=_bearer(publisher)), 403)

    # `modelreg token create` prints the token once; its name becomes the actor
    created = subprocess.run([sys.executable, "-m", "services.cli.main", "token", "create", "--role", "approver",
                              "--name", "bob"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DATABASE_URL": settings.dsn})
    assert created.returncode == 0, created.stderr
    bob = created.stdout.strip()
    assert auth.looks_like_token(bob) and bob not in created.stderr
    _is_problem(await client.post(url, json={**body, "actor": "mallory"}, headers=_bearer(bob)), 400)
    accepted = await client.post(url, json=body, headers=_bearer(bob))
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["event_id"]
    assert accepted.json()["actor"] == "bob" and accepted.json()["topic"] == "promotion.requested"
    request = (await kafka.wait_for("promotion.requested", lambda s: s.event["id"] == event_id))[0]
    assert request.data["actor"] == "bob" and request.key == NAME
    # two approvals are needed for production under this policy: bob's is recorded, as bob's
    recorded = await kafka.wait_for("registry.audit", lambda s: for_model(NAME, 3)(s)
                                    and s.data["action"] == "approval_recorded")
    assert recorded[0].data["actor"] == "bob" and recorded[0].data["evidence"]["approvers"] == ["bob"]
    _is_problem(await client.post(f"/api/v1/models/{NAME}/versions/77/promotion-requests", json=body,
                                  headers=_bearer(bob)), 404)

    listed = subprocess.run([sys.executable, "-m", "services.cli.main", "token", "list", "--json"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DATABASE_URL": settings.dsn})
    assert listed.returncode == 0 and bob not in listed.stdout
    assert {"bob", f"reader-{RUN}"} <= {json.loads(line)["name"] for line in listed.stdout.splitlines()}
    revoked = subprocess.run([sys.executable, "-m", "services.cli.main", "token", "revoke", "bob"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DATABASE_URL": settings.dsn})
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    _is_problem(await client.post(url, json=body, headers=_bearer(bob)), 401)


async def test_register_by_upload_and_report_an_evaluation(client: httpx.AsyncClient, db: asyncpg.Pool,
                                                          kafka: Kafka, settings: Settings) -> None:
    name = unique_name(f"life-api{RUN}-upload")
    publisher = await _token(db, "publisher", f"ci-{RUN}")
    payload = _artifact_bytes(7) * 400  # some hundred KiB, streamed to a file and S3 in chunks
    fields = {"metrics": json.dumps({"auc": 0.91}), "tags": json.dumps({"source": "api-test"}),
              "description": "uploaded through the API", "params": json.dumps({"depth": 4})}
    files = {"artifact": ("model.pkl", payload, "application/octet-stream")}
    _is_problem(await client.post(f"/api/v1/models/{name}/versions", data=fields, files=files), 401)
    _is_problem(await client.post(f"/api/v1/models/{name}/versions", data={**fields, "metrics": "{bad"},
                                  files=files, headers=_bearer(publisher)), 400)
    _is_problem(await client.post(f"/api/v1/models/{name}/versions", data=fields, headers=_bearer(publisher)), 400)
    answer = await client.post(f"/api/v1/models/{name}/versions", data=fields, files=files, headers=_bearer(publisher))
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["artifact"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert accepted["artifact"]["size_bytes"] == len(payload)

    ingested: Seen = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    assert ingested.data["artifact"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert ingested.data["registered_by"] == f"ci-{RUN}" and ingested.event["correlationid"] == accepted["event_id"]
    await eventually(lambda: db.fetchval("SELECT count(*) = 1 FROM view_versions WHERE name = $1", name))

    # publishers no longer evaluate: QA results come from an evaluator token
    refused = _is_problem(await client.post(f"/api/v1/models/{name}/versions/1/evaluations", headers=_bearer(publisher),
                                            json={"suite": "smoke", "metrics": {"auc": 0.91}}), 403)
    assert "role evaluator" in refused["detail"]
    evaluator = await _token(db, "evaluator", f"qa-{RUN}")
    evaluation = await client.post(f"/api/v1/models/{name}/versions/1/evaluations", headers=_bearer(evaluator),
                                   json={"suite": "smoke", "metrics": {"auc": 0.91}, "passed": True})
    assert evaluation.status_code == 202, evaluation.text
    event_id = evaluation.json()["event_id"]
    published = (await kafka.wait_for("metrics.evaluated", lambda s: s.event["id"] == event_id))[0]
    assert published.data["evaluator"] == f"qa-{RUN}" and published.event["correlationid"] == accepted["event_id"]
    for bad in ({"suite": "smoke", "metrics": {}}, {"suite": "smoke", "metrics": {"auc": "high"}},
                {"suite": "smoke", "metrics": {"auc": 1}, "environment": "moon"},
                {"suite": "sm\u0000oke", "metrics": {"auc": 1}}, {"suite": "", "metrics": {"auc": 1}}):
        _is_problem(await client.post(f"/api/v1/models/{name}/versions/1/evaluations", json=bad,
                                      headers=_bearer(evaluator)), 400)
    too_big = await client.post(f"/api/v1/models/{name}/versions/1/evaluations", headers=_bearer(evaluator),
                                content=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    _is_problem(too_big, 413)
    # an evaluator cannot pass its results off as another evaluator's
    forged = await client.post(f"/api/v1/models/{name}/versions/1/evaluations", headers=_bearer(evaluator),
                               json={"suite": "smoke", "metrics": {"auc": 0.99}, "evaluator": "qa/official"})
    _is_problem(forged, 403)


async def test_reads_can_require_a_token(settings: Settings, db: asyncpg.Pool, life: dict[str, Any]) -> None:
    """MODELREG_API_OPEN_READS=false: every read needs a reader token (over the ASGI app itself)."""
    app = build_asgi(settings, ApiSettings(open_reads=False), publisher=_NoPublishing())
    reader = await _token(db, "reader", f"viewer-{RUN}")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as asgi:
            for path in ("/api/v1/models", f"/api/v1/models/{NAME}", f"/api/v1/models/{NAME}/production",
                         "/api/v1/audit"):
                _is_problem(await asgi.get(path), 401)
                assert (await asgi.get(path, headers=_bearer(reader))).status_code == 200
            page = await asgi.get(f"/models/{NAME}")
            assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
            signed_in = await asgi.post("/ui/login", data={"token": reader, "next": f"/models/{NAME}"})
            assert signed_in.status_code == 303
            assert (await asgi.get(f"/models/{NAME}")).status_code == 200  # the cookie now


class _NoPublishing:
    async def register(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        raise AssertionError("not expected")

    evaluate = request_promotion = register


# ---------------------------------------------------------------------------- the CLI for people


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": settings.dsn, "MODELREG_POLICY_FILE": str(settings.policy_file)}
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env=env)


async def test_the_cli_reads_what_the_api_serves(settings: Settings, client: httpx.AsyncClient,
                                                 life: dict[str, Any], tmp_path: Any) -> None:
    versions = await asyncio.to_thread(_cli, settings, "versions", NAME, "--json")
    assert versions.returncode == 0, versions.stderr
    listed = json.loads(versions.stdout)
    served = (await client.get(f"/api/v1/models/{NAME}")).json()
    assert [(v["version"], v["stage"], v["key_metrics"]) for v in listed["versions"]] == \
        [(v["version"], v["stage"], v["key_metrics"]) for v in served["versions"]]
    table = await asyncio.to_thread(_cli, settings, "versions", NAME)
    assert table.returncode == 0 and "production" in table.stdout and "v3" in table.stdout
    models = await asyncio.to_thread(_cli, settings, "models", "--prefix", f"life-api{RUN}")
    assert models.returncode == 0 and NAME in models.stdout
    shown = await asyncio.to_thread(_cli, settings, "show", NAME, "2", "--json")
    assert json.loads(shown.stdout)["stage_history"][-1]["reason"] == "rollback"
    explained = await asyncio.to_thread(_cli, settings, "explain", NAME, "3")
    assert explained.returncode == 0 and "champion:auc" in explained.stdout and "does not beat" in explained.stdout
    missing = await asyncio.to_thread(_cli, settings, "show", NAME, "99")
    assert missing.returncode == 1 and "has no version 99" in missing.stderr and "Traceback" not in missing.stderr

    looser = tmp_path / "looser.yaml"
    looser.write_text(open(str(settings.policy_file)).read().replace("min_improvement: 0.01", "min_improvement: 0.001"))
    dry = await asyncio.to_thread(_cli, settings, "policy", "dry-run", str(looser), "--model", NAME, "--json")
    assert dry.returncode == 0, dry.stderr
    differences = {d["version"]: d for d in json.loads(dry.stdout)["differences"]}
    assert differences[3]["current"]["action"] == "hold" and differences[3]["new"]["action"] == "promote"
    same = await asyncio.to_thread(_cli, settings, "policy", "dry-run", str(settings.policy_file), "--model", NAME)
    assert same.returncode == 0 and "no version would be treated differently" in same.stdout


async def test_the_production_cache_is_dropped_when_the_champion_changes(
        api: ApiService, client: httpx.AsyncClient, db: asyncpg.Pool, settings: Settings) -> None:
    """Pollers are answered from memory until PostgreSQL notifies that the champion changed."""
    from tests.e2e.seed import Life, write

    name = f"life-api{RUN}-cached"
    life = Life(name)
    life.register(1, auc=0.93)
    life.evaluate(1, 0.93)
    life.move(1, "staging", "production", "policy")
    await write(settings, db, life)
    cache = api.app.state.resources.cache
    assert cache.live
    first = await client.get(f"/api/v1/models/{name}/production")
    hits = cache.hits
    again = await client.get(f"/api/v1/models/{name}/production")
    assert again.headers["etag"] == first.headers["etag"] and cache.hits == hits + 1
    assert name in cache._rows  # noqa: SLF001

    later = Life(name, start=datetime.now(UTC))
    later.correlation[2] = uuid.uuid4()
    later.register(2, auc=0.96)
    later.evaluate(2, 0.96)
    later.move(1, "production", "none", "superseded")
    later.move(2, "staging", "production", "policy")
    await write(settings, db, later)
    await eventually(lambda: name not in cache._rows, timeout=4)  # noqa: SLF001 - dropped by the notification
    now = await client.get(f"/api/v1/models/{name}/production")
    assert now.json()["version"] == 2 and now.headers["etag"] != first.headers["etag"]


async def test_probes_and_metrics(api: ApiService, client: httpx.AsyncClient, life: dict[str, Any]) -> None:
    assert (await client.get("/healthz")).json() == {"status": "alive", "service": "api"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "s3": "ok"}
    await client.get(f"/api/v1/models/{NAME}/production")
    assert api.health is not None and api.health.port
    async with httpx.AsyncClient(timeout=10) as outside:
        metrics = (await outside.get(f"http://127.0.0.1:{api.health.port}/metrics")).text
        assert (await outside.get(f"http://127.0.0.1:{api.health.port}/readyz")).status_code == 200
    assert 'modelreg_api_requests_total{method="GET",route="/api/v1/models/{name}/production",status="200"}' in metrics
    assert NAME not in metrics  # route templates, never raw paths
