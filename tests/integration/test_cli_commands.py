"""The CLI as a user runs it, each command a subprocess with the environment pointing at this
run's stack (topics, database, bucket, policy): `register`, `evaluate` and `promote` drive a
model through the running services; `replay` rebuilds the read tables and finds them equal;
`policy dry-run` compares a looser policy with the services' own, changes first."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from services.cli.up import default_policy
from shared.policy import load_policy
from shared.settings import Settings
from tests.integration.test_pipeline import evaluated, promoted, register
from tests.support import Kafka, as_principal, eventually, for_model, unique_name

ROOT = Path(__file__).resolve().parents[2]


def _environment(settings: Settings) -> dict[str, str]:
    """`settings` as the environment variables a user would export (secrets included)."""
    env = {}
    for field, info in type(settings).model_fields.items():
        value = getattr(settings, field)
        if info.validation_alias is None or value is None:
            continue
        env[str(info.validation_alias)] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return env


def modelreg(settings: Settings, *args: str, policy: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELREG_", "KAFKA_", "AWS_", "S3_"))}
    env.update(_environment(settings))
    if not policy:
        env.pop("MODELREG_POLICY_FILE")  # as a user who set none: the checkout's default applies
    done = subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done


async def run(settings: Settings, *args: str, policy: bool = True) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(modelreg, settings, *args, policy=policy)


async def test_register_evaluate_and_promote_from_the_command_line(
        settings: Settings, kafka: Kafka, pipeline, tmp_path: Path) -> None:
    name = unique_name("life-cli")
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps({"weights": [0.3, 0.4]}))

    done = await run(settings, "register", name, "--artifact", str(artifact), "--metric", "auc=0.9",
                     "--registered-by", "pipelines/cli-test", "--description", "from the CLI")
    assert done.returncode == 0, done.stderr
    correlation = done.stdout.split("published model.registered ")[1].split()[0]
    ingested = (await kafka.wait_for("model.ingested", for_model(name, 1)))[0]
    assert ingested.event["correlationid"] == correlation
    assert ingested.data["registered_by"] == "pipelines/cli-test"
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging", "policy"))

    done = await run(settings, "evaluate", name, "1", "--suite", "offline-eval", "--metric", "auc=0.95",
                     "--passed", "--evaluator", "qa/cli")
    assert done.returncode == 0, done.stderr
    first = (await kafka.wait_for("model.promoted", promoted(name, 1, "production", "policy")))[0]
    assert {g["gate"]: g["passed"] for g in first.data["evidence"]["gates"]}["threshold:auc"] is True

    # v2 misses the threshold: only two approvers' requests move it
    await run(settings, "register", name, "--artifact", str(artifact), "--registered-by", "pipelines/cli-test")
    await kafka.wait_for("model.promoted", promoted(name, 2, "staging", "policy"))
    await run(settings, "evaluate", name, "2", "--suite", "offline-eval", "--metric", "auc=0.5", "--passed")
    await kafka.wait_for("registry.audit", lambda s: for_model(name, 2)(s) and s.data["action"] == "held")
    for actor in ("alice", "bob"):
        done = await run(settings, "promote", name, "2", "--to", "production", "--actor", actor,
                         "--reason", "hotfix approved")
        assert done.returncode == 0 and f"by {actor}" in done.stdout, done.stderr
    manual = (await kafka.wait_for("model.promoted", promoted(name, 2, "production", "manual")))[0]
    assert manual.data["evidence"]["approvers"] == ["alice", "bob"]
    assert manual.data["evidence"]["request_reason"] == "hotfix approved"


async def test_replay_from_the_command_line_finds_the_read_tables_equal(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    name = unique_name("life-replay")
    await register(settings, kafka, name, 1)
    await kafka.wait_for("model.promoted", promoted(name, 1, "staging"))

    async def settled() -> bool:  # the audit writer has stored everything published so far
        published = {s.event["id"] for s in kafka.matching("registry.audit")}
        stored = await db.fetchval("SELECT count(*) FROM audit_log")
        return stored >= len(published) and await db.fetchval("SELECT count(*) FROM outbox") == 0

    await eventually(settled, timeout=60)
    # As ops run it: the read-only reader, which may see the audit writer's committed offsets.
    done = await run(as_principal(settings, "reader"), "replay", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["differences"] == [], (done.stdout[-2000:], done.stderr[-2000:])
    assert report["events"] >= 3  # at least this version's ingested, validated and staged records
    assert await db.fetchval("SELECT count(*) FROM view_versions WHERE name = $1", name) == 1


async def test_policy_dry_run_lists_changes_first_against_the_services_policy(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool, tmp_path: Path) -> None:
    name = unique_name("life-dry")
    for seed, auc in ((1, 0.95), (2, 0.85)):  # v1 the champion; v2 misses the 0.90 threshold
        await register(settings, kafka, name, seed)
        await kafka.wait_for("model.promoted", promoted(name, seed, "staging"))
        await kafka.publish("metrics.evaluated", evaluated(name, seed, {"auc": auc}))
        if seed == 1:
            await kafka.wait_for("model.promoted", promoted(name, 1, "production"))
    await kafka.wait_for("registry.audit", lambda s: for_model(name, 2)(s) and s.data["action"] == "held")
    await eventually(lambda: db.fetchval("SELECT count(*) = 2 FROM view_versions WHERE name = $1", name))
    services_policy = Path(str(settings.policy_file))
    looser = tmp_path / "looser.yaml"
    looser.write_text(services_policy.read_text().replace('auc: ">= 0.90"', 'auc: ">= 0.80"', 1)
                      .replace("champion: {metric: auc, direction: higher, min_improvement: 0.01}",
                               "champion: null", 1))

    changes = await run(settings, "policy", "dry-run", str(looser), "--model", name, "--json")
    assert changes.returncode == 0, changes.stderr
    only = json.loads(changes.stdout)
    assert [(d["version"], d["current"]["action"], d["new"]["action"]) for d in only["differences"]] == \
        [(2, "hold", "promote")]
    assert only["current_revision"] == load_policy(services_policy).revision == only["services_revision"]

    everything = json.loads((await run(settings, "policy", "dry-run", str(looser), "--model", name,
                                       "--all", "--json")).stdout)["differences"]
    assert [(d["version"], d["changed"]) for d in everything] == [(2, True), (1, False)]  # changes first
    table = (await run(settings, "policy", "dry-run", str(looser), "--model", name, "--all")).stdout
    assert table.index("v2") < table.index("unchanged under the new policy") < table.index("v1"), table

    # No MODELREG_POLICY_FILE: the checkout's infra/policy.yaml, the file `modelreg up` gives the
    # services; these services run another, and the table says so
    unset = await run(settings, "policy", "dry-run", str(looser), "--model", name, "--json", policy=False)
    assert unset.returncode == 0, unset.stderr
    resolved = json.loads(unset.stdout)
    assert resolved["current_policy"] == default_policy() == str(ROOT / "infra" / "policy.yaml")
    assert resolved["current_revision"] == load_policy(ROOT / "infra" / "policy.yaml").revision
    warned = await run(settings, "policy", "dry-run", str(looser), "--model", name, policy=False)
    assert "the running services last decided under policy " + load_policy(services_policy).revision \
        in " ".join(warned.stdout.split()), warned.stdout
