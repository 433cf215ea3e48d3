"""Dead letters people can act on, through the running services: the audit writer projects
`registry.dlq` into `dead_letters`; `modelreg dlq` (a subprocess, as ops runs it) and
`/api/v1/dlq` (admin tokens) list, show and redrive them; a redrive republishes the original
bytes once, and a record whose cause was fixed since completes its version's life."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.api import auth
from services.api.app import ApiService
from shared.settings import Settings
from tests.integration.conftest import running_api
from tests.integration.test_pipeline import evaluated, promoted, register, registered, safe_pickle
from tests.support import Kafka, eventually, for_model, put_artifact, unique_name


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": settings.dsn, "MODELREG_POLICY_FILE": str(settings.policy_file)}
    return subprocess.run([sys.executable, "-m", "services.cli.main", "dlq", *args], capture_output=True,
                          text=True, timeout=90, env=env)


async def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, settings, *args)


async def _letter(db: asyncpg.Pool, key: str, kind: str, *, skip: set[uuid.UUID] = frozenset()) -> asyncpg.Record:
    """The dead letter of `key` and `kind` once the audit writer has projected it."""
    async def found() -> asyncpg.Record | None:
        rows = await db.fetch("SELECT * FROM dead_letters WHERE key = $1 AND kind = $2 ORDER BY dead_lettered_at",
                              key, kind)
        fresh = [r for r in rows if r["id"] not in skip]
        return fresh[0] if fresh else None
    return await eventually(found, timeout=60)


async def _audit(db: asyncpg.Pool, letter_id: uuid.UUID, action: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM audit_log WHERE action = $1 AND evidence ->> 'dlq_event_id' = $2",
                          action, str(letter_id))


# ---------------------------------------------------------------------------- the CLI


async def test_a_redriven_qa_result_completes_the_life_of_the_version_that_arrived_since(
        settings: Settings, kafka: Kafka, pipeline: Any, db: asyncpg.Pool) -> None:
    """A QA result for a version not registered yet waits out the grace period and is
    dead-lettered (unknown_version); the version is then registered and reaches staging;
    `modelreg dlq redrive` republishes the result and the version is promoted to production."""
    name = unique_name("life-dlq")
    early = evaluated(name, 1, {"auc": 0.97})
    await kafka.publish("metrics.evaluated", early)
    letter = await _letter(db, name, "unknown_version")
    assert (letter["service"], letter["original_topic"]) == ("promotion", "metrics.evaluated")
    assert letter["original_event_id"] == uuid.UUID(early["id"])

    listed = await cli(settings, "list", "--service", "promotion", "--kind", "unknown_version", "--since", "1h",
                       "--json")
    assert listed.returncode == 0, listed.stderr
    assert str(letter["id"]) in [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert str(letter["id"]) not in (await cli(settings, "list", "--service", "ingest", "--json")).stdout
    table = await cli(settings, "list", "--kind", "unknown_version")
    assert table.returncode == 0, table.stderr
    [line] = [line for line in table.stdout.splitlines() if str(letter["id"]) in line]
    assert "promotion" in line and "metrics.evaluated[" in line and name in line

    await eventually(lambda: _audit(db, letter["id"], "dead_lettered"))
    shown = await cli(settings, "show", str(letter["id"]), "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert json.loads(document["payload_text"]) == early  # the original bytes, as text
    assert document["kind"] == "unknown_version" and f"{name} v1" in document["message"]
    assert [a["action"] for a in document["audit"]] == ["dead_lettered"]
    readable = await cli(settings, "show", str(letter["id"]))
    assert "unknown_version" in readable.stdout and early["id"] in readable.stdout

    # The cause is fixed: v1 is registered, validated and waits in staging for its QA result.
    await register(settings, kafka, name, 1)
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"), timeout=60)
    assert not kafka.matching("model.promoted", promoted(name, 1, "production"))

    redriven = await cli(settings, "redrive", str(letter["id"]), "--actor", "ops/alice")
    assert redriven.returncode == 0, redriven.stderr
    assert f"{letter['id']}: redriven to metrics.evaluated" in redriven.stdout
    done = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy"), timeout=60))[0]
    assert done.event["causationid"] == early["id"]  # promoted because of the redriven result

    # The same bytes, under the same key, went out once more.
    copies = await kafka.wait_for("metrics.evaluated", lambda s: s.key == name, count=2)
    assert [json.loads(s.value) for s in copies] == [early, early]
    records = await eventually(lambda: _audit(db, letter["id"], "redriven"))
    assert [(r["actor"], r["source"], r["name"]) for r in records] == [("ops/alice", "modelreg/audit", name)]
    row = await db.fetchrow("SELECT * FROM dead_letters WHERE id = $1", letter["id"])
    assert row["redriven_by"] == "ops/alice" and row["redriven_at"] is not None

    # Twice changes nothing: the letter is as it was, and no copy follows.
    again = await cli(settings, "redrive", str(letter["id"]), "--actor", "ops/bob")
    assert again.returncode == 0, again.stderr
    assert "already redriven" in again.stdout and "nothing changed" in again.stdout
    assert dict(await db.fetchrow("SELECT * FROM dead_letters WHERE id = $1", letter["id"])) == dict(row)
    # A later letter of the same model and topic, redriven after: when its copy arrives, any
    # second copy of the first (published before it, same partition) would have too.
    later = evaluated(name, 7, {"auc": 0.5})
    await kafka.publish("metrics.evaluated", later)
    second = await _letter(db, name, "unknown_version", skip={letter["id"]})
    bulk = await cli(settings, "redrive", "--kind", "unknown_version", "--service", "promotion")
    assert bulk.returncode == 0, bulk.stderr
    assert f"{second['id']}: redriven" in bulk.stdout and str(letter["id"]) not in bulk.stdout
    await kafka.wait_for("metrics.evaluated", lambda s: s.key == name and json.loads(s.value) == later, count=2)
    assert [json.loads(s.value) for s in kafka.matching("metrics.evaluated", lambda s: s.key == name)] == [
        early, early, later, later]
    assert len(await _audit(db, letter["id"], "redriven")) == 1


async def test_a_registration_redriven_once_its_artifact_is_uploaded_lives_its_life(
        settings: Settings, kafka: Kafka, pipeline: Any, db: asyncpg.Pool) -> None:
    """A registration whose artifact is not there yet is refused without taking a version and
    dead-lettered; the artifact is uploaded; the redrive ingests it as v1, which is validated,
    measured and promoted to production."""
    name = unique_name("life-upload")
    body, key = safe_pickle(42), f"inbox/{name}/late.pkl"
    artifact = {"uri": f"s3://{settings.s3_bucket}/{key}", "sha256": hashlib.sha256(body).hexdigest(),
                "size_bytes": len(body)}
    registration = registered(name, artifact)
    await kafka.publish("model.registered", registration)
    letter = await _letter(db, name, "artifact_missing")
    assert (letter["service"], letter["original_event_id"]) == ("ingest", uuid.UUID(registration["id"]))
    [rejected] = await kafka.wait_for("model.rejected", for_model(name))
    assert rejected.data.get("version") is None and rejected.data["reasons"][0]["code"] == "artifact_missing"
    assert not await db.fetchval("SELECT count(*) FROM model_versions WHERE name = $1", name)

    assert await put_artifact(settings, key, body) == artifact
    redriven = await cli(settings, "redrive", str(letter["id"]))
    assert redriven.returncode == 0, redriven.stderr
    [ingested] = await kafka.wait_for("model.ingested", for_model(name), timeout=60)
    assert ingested.data["version"] == 1 and ingested.event["causationid"] == registration["id"]
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"), timeout=60)
    await kafka.publish("metrics.evaluated", evaluated(name, 1, {"auc": 0.96}))
    await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy"), timeout=60)
    assert await eventually(lambda: db.fetchval(
        "SELECT stage = 'production' FROM view_versions WHERE name = $1 AND version = 1", name))


async def test_the_cli_says_what_it_cannot_do(settings: Settings, pipeline: Any) -> None:
    unknown = await cli(settings, "show", str(uuid.uuid4()))
    assert unknown.returncode == 1 and "no dead letter" in unknown.stderr
    assert (await cli(settings, "redrive", str(uuid.uuid4()))).returncode == 1
    bad = await cli(settings, "show", "not-an-id")
    assert bad.returncode == 2 and "not a dead letter id" in bad.stderr
    neither = await cli(settings, "redrive")
    assert neither.returncode == 2
    narrowed = await cli(settings, "redrive", str(uuid.uuid4()), "--service", "ingest")
    assert narrowed.returncode == 1 and "--service narrows --kind" in narrowed.stderr


# ---------------------------------------------------------------------------- the API and the page


@pytest.fixture(scope="module")
async def api(settings: Settings, pipeline: Any) -> AsyncIterator[ApiService]:
    async with running_api(settings, presign_seconds=120) as service:
        yield service


@pytest.fixture(scope="module")
async def client(api: ApiService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
async def tokens(db: asyncpg.Pool) -> dict[str, str]:
    run = uuid.uuid4().hex[:6]
    admin, _ = await auth.create(db, name=f"dlq-admin-{run}", role="admin")
    publisher, _ = await auth.create(db, name=f"dlq-publisher-{run}", role="publisher")
    return {"admin": admin, "publisher": publisher, "admin_name": f"dlq-admin-{run}"}


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admins_list_show_and_redrive_dead_letters_over_http(
        settings: Settings, kafka: Kafka, db: asyncpg.Pool, client: httpx.AsyncClient,
        tokens: dict[str, str]) -> None:
    name = unique_name("dlq-http")
    poison, other_poison = b"{this is not json " + name.encode(), b"{nor this " + name.encode()
    await kafka.publish_raw("model.registered", poison, key=name)
    await kafka.publish_raw("model.registered", other_poison, key=name)
    letter = await eventually(lambda: db.fetchrow("SELECT * FROM dead_letters WHERE payload = $1", poison), timeout=60)
    other = await eventually(lambda: db.fetchrow("SELECT * FROM dead_letters WHERE payload = $1", other_poison),
                             timeout=60)
    admin = _as(tokens["admin"])

    listed = await client.get("/api/v1/dlq", params={"service": "ingest", "kind": "not_json"}, headers=admin)
    assert listed.status_code == 200
    assert {str(letter["id"]), str(other["id"])} <= {x["id"] for x in listed.json()["items"]}
    elsewhere = await client.get("/api/v1/dlq", params={"kind": "unknown_version"}, headers=admin)
    assert str(letter["id"]) not in [x["id"] for x in elsewhere.json()["items"]]

    shown = (await client.get(f"/api/v1/dlq/{letter['id']}", headers=admin)).json()
    assert shown["payload_text"] == poison.decode()
    assert (shown["service"], shown["kind"], shown["key"]) == ("ingest", "not_json", name)

    first = await client.post(f"/api/v1/dlq/{letter['id']}/redrive", headers=admin)
    assert first.status_code == 202 and first.json()["status"] == "requested"
    assert first.json()["letter"]["redrive"]["requested_by"] == tokens["admin_name"]
    # The original bytes go back to model.registered; ingest refuses them again: a new letter.
    await kafka.wait_for("model.registered", lambda s: s.value == poison, count=2)
    assert await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM dead_letters WHERE payload = $1", poison))
    redriven = await eventually(lambda: _audit(db, letter["id"], "redriven"))
    assert redriven[0]["actor"] == tokens["admin_name"]  # the token's identity is the actor

    second = await client.post(f"/api/v1/dlq/{letter['id']}/redrive", headers=admin)
    assert second.status_code == 200 and second.json()["status"] == "already_redriven"
    unchanged = second.json()["letter"]["redrive"]
    assert unchanged["requested_at"] == first.json()["letter"]["redrive"]["requested_at"]
    assert (unchanged["requested_by"], unchanged["redriven_by"]) == (tokens["admin_name"], tokens["admin_name"])
    # Another letter of the same key redriven after it: when its copy arrives, a second copy of
    # the first (published before it, on the same partition) would have arrived too.
    assert (await client.post(f"/api/v1/dlq/{other['id']}/redrive", headers=admin)).status_code == 202
    await kafka.wait_for("model.registered", lambda s: s.value == other_poison, count=2)
    assert len(kafka.matching("model.registered", lambda s: s.value == poison)) == 2
    assert len(await _audit(db, letter["id"], "redriven")) == 1


async def test_only_admins_reach_dead_letters(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    anonymous = await client.get("/api/v1/dlq")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"].startswith("application/problem+json")
    publisher = await client.get("/api/v1/dlq", headers=_as(tokens["publisher"]))
    assert publisher.status_code == 403 and publisher.json()["status"] == 403
    post = await client.post(f"/api/v1/dlq/{uuid.uuid4()}/redrive", headers=_as(tokens["publisher"]))
    assert post.status_code == 403
    missing = await client.get(f"/api/v1/dlq/{uuid.uuid4()}", headers=_as(tokens["admin"]))
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    malformed = await client.get("/api/v1/dlq/not-a-uuid", headers=_as(tokens["admin"]))
    assert malformed.status_code == 400
    bad_time = await client.get("/api/v1/dlq", params={"since": "yesterday"}, headers=_as(tokens["admin"]))
    assert bad_time.status_code == 400 and "since" in bad_time.json()["detail"]


async def test_the_dead_letters_page_is_for_admins(settings: Settings, kafka: Kafka, db: asyncpg.Pool,
                                                   client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    name = unique_name("dlq-page")
    await kafka.publish_raw("model.registered", b"<not json/>", key=name)
    letter = await _letter(db, name, "not_json")
    login = await client.get("/dlq", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"].startswith("/ui/login")
    refused = await client.get("/dlq", headers=_as(tokens["publisher"]))
    assert refused.status_code == 403
    async with httpx.AsyncClient(base_url=client.base_url, cookies={"modelreg_token": tokens["admin"]}) as admin:
        page = await admin.get("/dlq", params={"kind": "not_json"})
    assert page.status_code == 200
    assert f'data-letter="{letter["id"]}"' in page.text and name in page.text
