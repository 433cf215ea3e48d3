"""`modelreg import mlflow` against a real `mlflow server` (sqlite backend, local artifact root)
seeded by MLflow's own client, and the running services: models, versions (numbers kept),
tags, descriptions, the source runs' metrics, aliases and stages reproduced, artifacts byte for
byte; an unsafe model named champion never crowned; a second run copies only what is new.

The server needs the full `mlflow` package, which conflicts with the test extra's mlflow-skinny:
it runs from the interpreter `modelreg bench --compare-mlflow` uses (bench/.mlflow-venv,
installed from PyPI on first use). The seeding client is the test extra's mlflow-skinny.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared.manifest import FileEntry, manifest_digest
from shared.settings import Settings
from shared.stack.proc import terminate
from shared.storage import ObjectStore, S3Location, parse_s3_uri
from tests.integration.test_cli_commands import _environment
from tests.support import as_principal, eventually, kafka_env

# Not in `make test` (a real MLflow server, installed on first use, and three imports: 5 to 10
# minutes); `make test-slow` runs it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:6]
FRAUD = f"Life Import {RUN} Fraud"            # MLflow allows capitals and spaces ...
FRAUD_HERE = f"life-import-{RUN}-fraud"       # ... modelreg's names are slugs
CHURN = f"life-import-{RUN}-churn"
EVIL = f"life-import-{RUN}-evil"


@pytest.fixture(scope="module", autouse=True)
def _mlflow_globals_put_back() -> Iterator[None]:
    """MLflow's fluent API keeps the tracking and registry URIs this module sets as process
    globals, and exports them as MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI besides: left as
    they are, the next module's MLflow calls went to this module's stopped servers."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    import mlflow

    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None: no URI of its own (and unsets the variable)
    mlflow.set_registry_uri(None)  # type: ignore[arg-type]
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def running_mlflow_server(where: Path, *artifact_options: str) -> AsyncIterator[str]:
    """A real `mlflow server` (sqlite backend in `where`) with these artifact options, until the
    block ends; yields its URL. Started (a venv installed on first use, then a wait for its
    health) and stopped off the event loop: the session's services run on that loop, and a
    wait of many seconds there let their Kafka sessions expire, their groups rebalancing under
    the test that followed."""
    server = _mlflow_server(where, *artifact_options)
    url = await asyncio.to_thread(server.__enter__)
    try:
        yield url
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


@contextmanager
def _mlflow_server(where: Path, *artifact_options: str) -> Iterator[str]:
    from bench.mlflow_compare import interpreter

    python = interpreter(lambda line: print(f"[mlflow] {line}"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(where / "server.log", "ab") as log:
        server = subprocess.Popen(
            [python, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{where / 'mlflow.db'}",
             *artifact_options, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            # No background job runners: the registry is all this test needs of the server.
            env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (where / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start: " + (where / "server.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        terminate(server.pid, timeout=20)
        server.wait()


@pytest.fixture(scope="module")
async def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    where = tmp_path_factory.mktemp("mlflow-server")
    async with running_mlflow_server(where, "--artifacts-destination", str(where / "artifacts")) as url:
        yield url


class _Unsafe:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo imported-and-owned",))


def _client(url: str) -> Any:
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=url, registry_uri=url)


def _log_sklearn(url: str, name: str, auc: float, *, c: float = 1.0) -> str:
    """One run logging a small scikit-learn classifier as an MLflow model, registered as the
    next version of `name`; returns the run id."""
    import mlflow
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    mlflow.set_experiment(f"import-{RUN}")
    features = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
    model = LogisticRegression(C=c).fit(features, np.array([0, 1, 0, 1]))
    with mlflow.start_run() as run:
        mlflow.log_metric("auc", auc)
        mlflow.log_param("C", c)
        # Requirements given, so MLflow does not start a process per model to infer them.
        mlflow.sklearn.log_model(model, name="model", registered_model_name=name, serialization_format="pickle",
                                 pip_requirements=["scikit-learn"])
    return str(run.info.run_id)


def _log_file_model(url: str, name: str, payload: bytes) -> str:
    """A version whose artifact is a directory holding one pickle file."""
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    mlflow.set_experiment(f"import-{RUN}")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "model.pkl").write_bytes(payload)
        mlflow.log_artifact(str(Path(scratch) / "model.pkl"), artifact_path="evil")
    client = _client(url)
    client.create_registered_model(name)
    client.create_model_version(name, f"{run.info.artifact_uri}/evil", run_id=run.info.run_id)
    return str(run.info.run_id)


def _seed(url: str) -> dict[str, Any]:
    """fraud: v1, v2 (the champion alias, a tag, a description), v3 in Staging; churn: v1
    deleted, v2 in Production (no alias); evil: an os.system pickle named champion."""
    client = _client(url)
    runs = {}
    for version, auc in ((1, 0.80), (2, 0.91), (3, 0.93)):
        runs[(FRAUD, version)] = _log_sklearn(url, FRAUD, auc, c=float(version))
    client.set_registered_model_tag(FRAUD, "team", "risk")
    client.update_registered_model(FRAUD, description="scores card payments")
    client.set_registered_model_alias(FRAUD, "champion", "2")
    client.set_model_version_tag(FRAUD, "2", "reviewed", "yes")
    client.update_model_version(FRAUD, "2", description="the one in production")
    client.transition_model_version_stage(FRAUD, "3", "Staging")
    for version in (1, 2):
        runs[(CHURN, version)] = _log_sklearn(url, CHURN, 0.7 + version / 100, c=float(version))
    client.delete_model_version(CHURN, "1")
    client.transition_model_version_stage(CHURN, "2", "Production")
    runs[(EVIL, 1)] = _log_file_model(url, EVIL, pickle.dumps(_Unsafe()))
    client.set_registered_model_alias(EVIL, "champion", "1")
    return runs


def _download(url: str, name: str, version: int, into: Path) -> Path:
    import mlflow.artifacts

    uri = _client(url).get_model_version_download_uri(name, str(version))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into), tracking_uri=url))


def _manifest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def import_mlflow(settings: Settings, ops_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`modelreg import mlflow` as a user runs it: the pipeline principal's settings in the
    environment, the ops principal's in a credentials file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELREG_", "KAFKA_", "AWS_", "S3_", "MLFLOW_"))}
    env.update(_environment(as_principal(settings, "pipeline")))
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "import", "mlflow", *args,
                           "--ops-credentials", str(ops_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def ops_file(settings: Settings, tmp_path: Path) -> Path:
    path = tmp_path / "ops.env"
    ops = kafka_env(as_principal(settings, "ops"))
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in ops.items() if k != "KAFKA_BOOTSTRAP_SERVERS"))
    return path


async def _versions(db: asyncpg.Pool, name: str) -> dict[int, dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM view_versions WHERE name = $1", name)
    return {r["version"]: dict(r) for r in rows}


async def _imported_records(db: asyncpg.Pool, name: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT version, to_stage, actor, evidence FROM audit_log WHERE name = $1 "
                          "AND action = 'imported' ORDER BY seq", name)
    return [dict(r) for r in rows]


async def _champion(db: asyncpg.Pool, name: str) -> int | None:
    return await db.fetchval("SELECT champion FROM view_models WHERE name = $1", name)


async def _stored_files(settings: Settings, uri: str) -> dict[str, str]:
    prefix = parse_s3_uri(uri)
    async with ObjectStore(settings) as store:
        found = {}
        for key, _ in await store.list_prefix(prefix.bucket, prefix.key, 1000):
            digest = await store.digest(S3Location(prefix.bucket, key))
            assert digest is not None
            found[key[len(prefix.key):]] = digest[0]
    return found


async def test_bad_input_is_one_readable_line(settings: Settings, ops_file: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    done = await asyncio.to_thread(import_mlflow, settings, ops_file, "--tracking-uri", dead, "--actor", "alice")
    assert done.returncode == 1
    assert f"cannot reach the MLflow tracking server at {dead}" in done.stderr
    done = await asyncio.to_thread(import_mlflow, settings, ops_file, "--tracking-uri", dead, "--actor", "alice",
                                   "--models", "fraud-[ab")
    assert done.returncode == 1 and "never closes" in done.stderr


async def test_an_mlflow_registry_is_imported_once_and_then_only_what_is_new(
        settings: Settings, pipeline: Any, db: asyncpg.Pool, mlflow_server: str, ops_file: Path,
        tmp_path: Path) -> None:
    url = mlflow_server
    runs = await asyncio.to_thread(_seed, url)
    glob = f"*{RUN}*"

    dry = await asyncio.to_thread(import_mlflow, settings, ops_file, "--tracking-uri", url, "--models", glob,
                                  "--actor", "alice", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (f"{FRAUD_HERE} (MLflow: {FRAUD})\n  v1: copied, then none\n  v2: copied, then production\n"
            "  v3: copied, then staging\n") in dry.stdout, dry.stdout
    assert await _versions(db, FRAUD_HERE) == {}  # a dry run publishes nothing

    first = await asyncio.to_thread(import_mlflow, settings, ops_file, "--tracking-uri", url, "--models", glob,
                                    "--actor", "alice")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "imported 5 version(s)" in first.stdout

    # Models, versions with their numbers, stages and the champion as MLflow had them.
    fraud = await _versions(db, FRAUD_HERE)
    trail = [(r["version"], r["action"], r["actor"], r["reason"]) for r in await db.fetch(
        "SELECT version, action, actor, reason FROM audit_log WHERE name = $1 ORDER BY seq", FRAUD_HERE)]
    assert {v: (r["stage"], r["status"]) for v, r in fraud.items()} == {
        1: ("none", "validated"), 2: ("production", "validated"), 3: ("staging", "validated")}, (first.stdout, trail)
    assert await _champion(db, FRAUD_HERE) == 2
    churn = await _versions(db, CHURN)
    assert list(churn) == [2] and churn[2]["stage"] == "production"  # v1 was deleted over there
    # Run ids, the source run's metrics and params, tags (model's and version's), descriptions.
    assert fraud[2]["run_id"] == runs[(FRAUD, 2)]
    assert fraud[2]["metrics"] == {"auc": 0.91} and fraud[2]["params"] == {"C": "2.0"}
    assert fraud[2]["tags"]["team"] == "risk" and fraud[2]["tags"]["reviewed"] == "yes"
    assert fraud[2]["description"] == "the one in production"
    assert fraud[1]["description"] == "scores card payments"
    # The artifacts, file by file, are the bytes MLflow serves.
    for version in (1, 2, 3):
        local = await asyncio.to_thread(_download, url, FRAUD, version, tmp_path / f"fraud-{version}")
        files = _manifest(local)
        assert "MLmodel" in files and "model.pkl" in files
        assert await _stored_files(settings, fraud[version]["artifact_uri"]) == files
        assert fraud[version]["sha256"] == manifest_digest(
            [FileEntry(p, (local / p).stat().st_size, h) for p, h in files.items()])
    # The unsafe champion: copied, scanned, rejected, never crowned.
    evil = await _versions(db, EVIL)
    assert evil[1]["status"] == "rejected" and await _champion(db, EVIL) is None
    assert f"{EVIL} v1: rejected" in first.stdout
    refusals = await eventually(lambda: db.fetch("SELECT actor, reason FROM audit_log WHERE name = $1 "
                                                 "AND action = 'import_refused'", EVIL))
    assert [(r["actor"], "rejected" in r["reason"]) for r in refusals] == [("alice", True)]
    # Each version's `imported` record names the MLflow ids and the approver.
    records = await _imported_records(db, FRAUD_HERE)
    assert sorted((r["version"], r["to_stage"]) for r in records) == [(1, "none"), (2, "production"),
                                                                     (3, "staging")]
    crowned = next(r for r in records if r["version"] == 2)
    assert crowned["actor"] == "alice"
    source = crowned["evidence"]["imported_from"]
    assert (source["system"], source["model"], source["version"], source["run_id"], source["aliases"]) == (
        "mlflow", FRAUD, 2, runs[(FRAUD, 2)], ["champion"])
    assert source["tracking_uri"] == url
    promoted = await db.fetchrow("SELECT reason, evidence FROM audit_log WHERE name = $1 AND version = 2 "
                                 "AND action = 'promoted'", FRAUD_HERE)
    assert promoted["evidence"]["imported_from"]["model"] == FRAUD  # the champion's move says why
    seq_after_first = await db.fetchval("SELECT max(seq) FROM audit_log")

    # Meanwhile in MLflow: v4 is trained and becomes the champion.
    runs[(FRAUD, 4)] = await asyncio.to_thread(_log_sklearn, url, FRAUD, 0.95, c=4.0)
    await asyncio.to_thread(_client(url).set_registered_model_alias, FRAUD, "champion", "4")

    second = await asyncio.to_thread(import_mlflow, settings, ops_file, "--tracking-uri", url, "--models", glob,
                                     "--actor", "alice")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "imported 1 version(s)" in second.stdout
    fraud = await _versions(db, FRAUD_HERE)
    assert sorted(fraud) == [1, 2, 3, 4]
    assert await _champion(db, FRAUD_HERE) == 4
    assert fraud[2]["stage"] == "none"  # superseded by the new champion
    records = await _imported_records(db, FRAUD_HERE)
    assert sorted(r["version"] for r in records) == [1, 2, 3, 4]  # one each: nothing imported twice
    churn = await _versions(db, CHURN)
    assert list(churn) == [2] and churn[2]["stage"] == "production"
    new_records = await db.fetch("SELECT name, version, action FROM audit_log WHERE seq > $1 AND name = ANY($2)",
                                 seq_after_first, [CHURN, EVIL])
    assert [dict(r) for r in new_records if r["action"] in ("imported", "ingested", "promoted")] == []

    third = await asyncio.to_thread(import_mlflow, settings, ops_file, "--tracking-uri", url, "--models", glob,
                                    "--actor", "alice", "--wait", "5")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "imported 0 version(s)" in third.stdout and "asked for 0 stage(s)" in third.stdout
