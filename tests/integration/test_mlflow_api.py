"""MLflow's own client against modelreg's MLflow registry API, on the real stack: the API runs
in-process (uvicorn), the pipeline's services consume the events it publishes, and every MLflow
call goes over HTTP exactly as an unmodified MLflow script makes it (run in a thread: the
client is synchronous and the server shares this event loop)."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from services.api import auth
from services.api.app import ApiService
from shared.local_artifacts import file_uri
from shared.settings import Settings
from tests.integration.conftest import running_api
from tests.support import Kafka, eventually, for_model, put_artifact

RUN = uuid.uuid4().hex[:6]
T = TypeVar("T")


@pytest.fixture(scope="module")
async def api(settings: Settings, pipeline: Any) -> AsyncIterator[ApiService]:
    async with running_api(settings, open_reads=False) as service:
        yield service


@pytest.fixture(scope="module")
async def tokens(db: asyncpg.Pool) -> dict[str, str]:
    made = {}
    for role, name in (("publisher", f"ml-pipeline-{RUN}"), ("evaluator", f"ml-qa-{RUN}"), ("approver", "alice"),
                       ("reader", f"ml-reader-{RUN}")):
        made[role], _ = await auth.create(db, name=name, role=role)
    made["scoped"], _ = await auth.create(db, name=f"ml-scoped-{RUN}", role="reader", models=["elsewhere-*"])
    return made


@pytest.fixture
def as_token(api: ApiService, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Point MLflow at the API with a token, as a user's environment would."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", api.url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", api.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refusal is an answer, not an outage

    def use(token: str | None, *, basic: bool = False) -> None:
        for variable in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(variable, raising=False)
        if token is not None and basic:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "anyone")
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", token)
        elif token is not None:
            monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    yield use


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _refused(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> MlflowException:
    with pytest.raises(MlflowException) as caught:
        fn(*args, **kwargs)
    return caught.value


async def _qa(api: ApiService, token: str, name: str, version: int, suite: str) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        answer = await http.post(f"/api/v1/models/{name}/versions/{version}/evaluations",
                                 headers={"Authorization": f"Bearer {token}"},
                                 json={"suite": suite, "metrics": {"auc": 0.97}, "passed": True})
        assert answer.status_code == 202, answer.text


def _model_bytes(seed: str) -> bytes:
    return pickle.dumps({"weights": [0.1, 0.2], "bias": 0.5, "run": seed})


async def test_register_promote_by_policy_and_load_by_champion_alias(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None],
        kafka: Kafka, db: asyncpg.Pool, tmp_path: Path) -> None:
    name = f"mlflow-{RUN}-fraud"
    body = _model_bytes(name)
    artifact = await put_artifact(settings, f"inbox/{name}/model.pkl", body)
    as_token(tokens["publisher"])
    # An unmodified MLflow registration: the model, then a version from an S3 source, awaited.
    created = await call(mlflow.register_model, artifact["uri"], name, await_registration_for=60,
                         tags={"team": "risk"})
    assert created.version == "1"
    published = (await kafka.wait_for("model.registered", for_model(name, 1)))[0]
    assert published.data["registered_by"] == f"ml-pipeline-{RUN}"
    assert published.data["artifact"]["uri"] == artifact["uri"]
    client = MlflowClient()
    version = await call(client.get_model_version, name, "1")
    assert version.status == "READY" and version.current_stage in ("None", "Staging")
    assert version.source == artifact["uri"] and version.tags == {"team": "risk"}
    assert version.user_id == f"ml-pipeline-{RUN}"

    # No champion yet: MLflow's usual "not found".
    missing = await call(_refused, client.get_model_version_by_alias, name, "champion")
    assert missing.error_code == "RESOURCE_DOES_NOT_EXIST"

    # A QA result (an evaluator token, through the HTTP API, signed by it): the policy promotes.
    await _qa(api, tokens["evaluator"], name, 1, "smoke")
    await kafka.wait_for("model.promoted", lambda s: for_model(name, 1)(s) and s.data["to_stage"] == "production")
    champion = await eventually(lambda: db.fetchval("SELECT champion FROM view_models WHERE name = $1", name))
    assert champion == 1
    as_token(tokens["reader"])
    by_alias = await call(client.get_model_version_by_alias, name, "champion")
    assert by_alias.version == "1" and by_alias.current_stage == "Production" and "champion" in by_alias.aliases

    # The deployment side: models:/NAME@champion, downloaded by MLflow's own artifact repository
    # from the registry's copy (not the source), with nothing but the reader's token.
    target = await call(mlflow.artifacts.download_artifacts, f"models:/{name}@champion", dst_path=str(tmp_path))
    downloaded = Path(target) / "model.pkl"
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == artifact["sha256"]
    stored = await db.fetchval("SELECT artifact_uri FROM view_versions WHERE name = $1 AND version = 1", name)
    assert stored != artifact["uri"] and stored.startswith(f"s3://{settings.s3_bucket}/artifacts/")
    uri = await call(client.get_model_version_download_uri, name, "1")
    assert uri == f"{api.url}/api/2.0/mlflow-artifacts/artifacts/models/{name}/1"

    # Registry reads through the client: get, search by name/LIKE/ILIKE/tags, versions.
    model = await call(client.get_registered_model, name)
    assert model.name == name and model.aliases == {"champion": "1"}
    assert [v.version for v in model.latest_versions] == ["1"]
    latest = await call(client.get_latest_versions, name, stages=["Production"])
    assert [(v.version, v.current_stage) for v in latest] == [("1", "Production")]
    assert await call(client.get_latest_versions, name, stages=["Staging"]) == []
    for query in (f"name = '{name}'", f"name LIKE 'mlflow-{RUN}-%'", f"name ILIKE 'MLFLOW-{RUN}-FRAUD'"):
        assert [m.name for m in await call(client.search_registered_models, filter_string=query)] == [name], query
    versions = await call(client.search_model_versions, f"name = '{name}' AND tags.team = 'risk'")
    assert [(v.name, v.version, v.current_stage) for v in versions] == [(name, "1", "Production")]
    assert await call(client.search_model_versions, f"name = '{name}' AND tags.team = 'fraud'") == []


async def test_registered_model_labels_are_stored_and_audited(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None],
        kafka: Kafka, db: asyncpg.Pool) -> None:
    name = f"mlflow-{RUN}-labels"
    artifact = await put_artifact(settings, f"inbox/{name}/model.pkl", _model_bytes(name))
    as_token(tokens["publisher"], basic=True)  # MLFLOW_TRACKING_USERNAME/PASSWORD
    client = MlflowClient()
    created = await call(client.create_registered_model, name, tags={"owner": "risk"}, description="first")
    assert created.name == name and created.tags == {"owner": "risk"} and created.description == "first"
    again = await call(_refused, client.create_registered_model, name)
    assert again.error_code == "RESOURCE_ALREADY_EXISTS"
    pending = await call(client.create_model_version, name, artifact["uri"], await_creation_for=0)
    assert pending.status == "PENDING_REGISTRATION" and pending.version == "1"
    await eventually(lambda: db.fetchval("SELECT status = 'validated' FROM view_versions WHERE name = $1", name))

    await call(client.update_registered_model, name, description="second")
    await call(client.set_registered_model_tag, name, "tier", "gold")
    await call(client.delete_registered_model_tag, name, "owner")
    await call(client.update_model_version, name, "1", description="v1 notes")
    await call(client.set_model_version_tag, name, "1", "reviewed", "yes")
    await call(client.set_registered_model_alias, name, "challenger", "1")
    model = await call(client.get_registered_model, name)
    assert model.description == "second" and model.tags == {"tier": "gold"}
    assert model.aliases == {"challenger": "1"}
    version = await call(client.get_model_version_by_alias, name, "challenger")
    assert version.version == "1" and version.description == "v1 notes" and version.tags["reviewed"] == "yes"
    assert [m.name for m in await call(client.search_registered_models, filter_string="tags.tier = 'gold'")
            if m.name.startswith(f"mlflow-{RUN}")] == [name]
    await call(client.delete_registered_model_alias, name, "challenger")
    gone = await call(_refused, client.get_model_version_by_alias, name, "challenger")
    assert gone.error_code == "RESOURCE_DOES_NOT_EXIST"

    log = await db.fetch("SELECT actor, action, key, old, new FROM mlflow_label_log WHERE name = $1 ORDER BY id", name)
    assert {r["actor"] for r in log} == {f"ml-pipeline-{RUN}"}
    assert [r["action"] for r in log] == [
        "model_created", "model_tag_set", "model_description_set", "model_tag_set", "model_tag_deleted",
        "version_description_set", "version_tag_set", "alias_set", "alias_deleted"]
    assert (log[2]["old"], log[2]["new"]) == ("first", "second")


async def test_champion_alias_is_a_promotion_request_the_policy_decides(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None],
        kafka: Kafka, db: asyncpg.Pool) -> None:
    name = f"manual-mlflow-{RUN}"  # the policy's manual-* rule: an approver (alice or bob) decides
    artifact = await put_artifact(settings, f"inbox/{name}/model.pkl", _model_bytes(name))
    as_token(tokens["publisher"])
    client = MlflowClient()
    await call(mlflow.register_model, artifact["uri"], name, await_registration_for=60)
    await _qa(api, tokens["evaluator"], name, 1, "offline-eval")
    # a publisher may not move versions
    refused = await call(_refused, client.set_registered_model_alias, name, "champion", "1")
    assert refused.error_code == "PERMISSION_DENIED" and "role approver" in refused.message
    as_token(tokens["approver"])
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        answer = await http.post("/api/2.0/mlflow/registered-models/alias",
                                 headers={"Authorization": f"Bearer {tokens['approver']}"},
                                 json={"name": name, "alias": "champion", "version": "1"})
    assert answer.status_code == 200, answer.text
    said = answer.json()["modelreg"]
    assert said["decided_by"] == "policy" and said["promotion_requested"]["to_stage"] == "production"
    event_id = said["promotion_requested"]["event_id"]
    request = (await kafka.wait_for("promotion.requested", lambda s: s.event["id"] == event_id))[0]
    assert request.data["actor"] == "alice" and request.data["to_stage"] == "production"
    await kafka.wait_for("model.promoted", lambda s: for_model(name, 1)(s) and s.data["to_stage"] == "production")
    await eventually(lambda: db.fetchval("SELECT champion = 1 FROM view_models WHERE name = $1", name))
    champion = await call(client.get_model_version_by_alias, name, "champion")
    assert champion.version == "1" and champion.current_stage == "Production"
    # the audit log names the tokens' identities: who registered, who asked for production
    actors = await eventually(lambda: db.fetch(
        "SELECT action, actor FROM audit_log WHERE name = $1 AND action IN ('ingested', 'promoted')", name))
    assert (("ingested", f"ml-pipeline-{RUN}") in {tuple(r) for r in actors})
    assert any(r["action"] == "promoted" and "alice" in r["actor"] for r in actors), actors
    # transition-stage maps the same way: a request under the approver's name
    moved = await call(client.transition_model_version_stage, name, "1", "Archived")
    assert moved.version == "1"
    archived = await kafka.wait_for("promotion.requested", lambda s: for_model(name, 1)(s)
                                    and s.data["to_stage"] == "archived")
    assert archived[0].data["actor"] == "alice"
    # the champion alias cannot be deleted as a label
    kept = await call(_refused, client.delete_registered_model_alias, name, "champion")
    assert kept.error_code == "INVALID_PARAMETER_VALUE"


async def test_a_rejected_registration_reads_failed_with_its_reasons(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None]) -> None:
    name = f"strict-mlflow-{RUN}"  # the strict-* rule needs a signature and a description
    artifact = await put_artifact(settings, f"inbox/{name}/model.pkl", _model_bytes(name))
    as_token(tokens["publisher"])
    failed = await call(_refused, mlflow.register_model, artifact["uri"], name, await_registration_for=60)
    assert "FAILED_REGISTRATION" in failed.message
    version = await call(MlflowClient().get_model_version, name, "1")
    assert version.status == "FAILED_REGISTRATION" and "signature" in version.status_message
    no_copy = await call(_refused, MlflowClient().get_model_version_download_uri, name, "1")
    assert no_copy.error_code == "INVALID_PARAMETER_VALUE"


async def test_errors_and_tokens_as_mlflow_expects(
        api: ApiService, tokens: dict[str, str], as_token: Callable[..., None]) -> None:
    client = MlflowClient()
    as_token(None)
    anonymous = await call(_refused, client.search_registered_models)
    assert anonymous.error_code == "UNAUTHENTICATED"
    as_token("mr_" + "x" * 43)
    unknown = await call(_refused, client.get_registered_model, "anything")
    assert unknown.error_code == "UNAUTHENTICATED"
    as_token(tokens["reader"])
    missing = await call(_refused, client.get_registered_model, f"nothing-{RUN}")
    assert missing.error_code == "RESOURCE_DOES_NOT_EXIST"
    bad_filter = await call(_refused, client.search_registered_models, filter_string="owner = 'x'")
    assert bad_filter.error_code == "INVALID_PARAMETER_VALUE" and "owner" in bad_filter.message
    write = await call(_refused, client.create_registered_model, f"mlflow-{RUN}-reader")
    assert write.error_code == "PERMISSION_DENIED"
    as_token(tokens["publisher"])
    for source, says in (("file:///tmp/model", "MODELREG_ARTIFACT_ROOTS"),
                         ("s3://someone-elses/m.pkl", "ALLOWED_BUCKETS"),
                         ("runs:/abc/model", "MODELREG_API_MLFLOW_TRACKING_URI"), ("ftp://x/m", "s3:// URIs, or file://")):
        refused = await call(_refused, client.create_model_version, f"mlflow-{RUN}-sources", source)
        assert refused.error_code == "INVALID_PARAMETER_VALUE" and says in refused.message, refused.message
    bad_name = await call(_refused, client.create_registered_model, "Fraud Detector")
    assert bad_name.error_code == "INVALID_PARAMETER_VALUE" and "lower-case" in bad_name.message
    as_token(tokens["scoped"])
    outside = await call(_refused, client.get_registered_model, f"mlflow-{RUN}-fraud")
    assert outside.error_code == "PERMISSION_DENIED"
    assert await call(client.search_registered_models, filter_string=f"name LIKE 'mlflow-{RUN}%'") == []
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        answer = await http.get("/ajax-api/2.0/mlflow/registered-models/get", params={"name": "x"},
                                headers={"Authorization": f"Bearer {tokens['reader']}"})
        assert answer.status_code == 404 and answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        unknown_route = await http.get("/api/2.0/mlflow/experiments/list")
        assert unknown_route.status_code == 404 and unknown_route.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def _sklearn_model_dir(where: Path) -> tuple[Path, Any, Any]:
    """A small scikit-learn classifier saved as an MLflow model directory (MLmodel, model.pkl,
    its environment files), with the rows it was fitted on."""
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    features = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1], [0.1, 0.8], [0.8, 0.3]])
    labels = np.array([0, 1, 0, 1, 0, 1])
    model = LogisticRegression().fit(features, labels)
    path = where / "model"
    mlflow.sklearn.save_model(model, str(path), serialization_format="pickle")
    return path, model, features


async def _upload_dir(settings: Settings, local: Path, prefix: str) -> str:
    from shared.storage import ObjectStore

    async with ObjectStore(settings) as store:
        await store.ensure_bucket()
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            await (await store.boto()).put_object(
                Bucket=settings.s3_bucket, Key=prefix + file.relative_to(local).as_posix(), Body=file.read_bytes())
    return f"s3://{settings.s3_bucket}/{prefix}"


async def _crown_and_load(settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None],
                          db: asyncpg.Pool, name: str, model: Any, features: Any) -> str:
    """A QA result crowns version 1 (the policy's decision); a reader loads `models:/NAME@champion`
    with MLflow and it predicts as the model did. Returns where the registry keeps its copy."""
    await _qa(api, tokens["evaluator"], name, 1, "smoke")
    await eventually(lambda: db.fetchval("SELECT champion = 1 FROM view_models WHERE name = $1", name))
    as_token(tokens["reader"])
    loaded = await call(mlflow.pyfunc.load_model, f"models:/{name}@champion")
    assert list(loaded.predict(features)) == list(model.predict(features))
    stored = await db.fetchval("SELECT artifact_uri FROM view_versions WHERE name = $1 AND version = 1", name)
    assert stored.startswith(f"s3://{settings.s3_bucket}/artifacts/{name}/1/")  # the registry's copy
    return str(stored)


async def test_an_mlflow_model_directory_is_loaded_back_by_its_champion_alias(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None],
        kafka: Kafka, db: asyncpg.Pool, tmp_path: Path) -> None:
    name = f"mlflow-{RUN}-sklearn"
    local, model, features = await call(_sklearn_model_dir, tmp_path)
    source = await _upload_dir(settings, local, f"inbox/{name}/model/")
    as_token(tokens["publisher"])
    created = await call(mlflow.register_model, source, name, await_registration_for=120)
    assert created.version == "1"
    version = await call(MlflowClient().get_model_version, name, "1")
    assert version.status == "READY", version.status_message
    stored = await _crown_and_load(settings, api, tokens, as_token, db, name, model, features)
    assert stored.endswith("/")
    # what was loaded is the registry's copy, file for file
    downloaded = Path(await call(mlflow.artifacts.download_artifacts, f"models:/{name}@champion",
                                 dst_path=str(tmp_path / "copy")))
    # (registered_model_meta is written by MLflow's client beside what it downloaded)
    assert sorted(p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*")
                  if p.is_file() and p.name != "registered_model_meta") == \
        sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert (downloaded / "MLmodel").read_bytes() == (local / "MLmodel").read_bytes()


async def test_searches_page_and_order_as_asked(
        api: ApiService, tokens: dict[str, str], as_token: Callable[..., None]) -> None:
    as_token(tokens["publisher"])
    client = MlflowClient()
    names = [f"mlflow-{RUN}-page-{letter}" for letter in "abc"]
    for name in names:
        await call(client.create_registered_model, name)
    query = f"name LIKE 'mlflow-{RUN}-page-%'"
    first = await call(client.search_registered_models, filter_string=query, max_results=2, order_by=["name DESC"])
    assert [m.name for m in first] == names[::-1][:2] and first.token
    rest = await call(client.search_registered_models, filter_string=query, max_results=2, order_by=["name DESC"],
                      page_token=first.token)
    assert [m.name for m in rest] == names[:1] and not rest.token
    forged = await call(_refused, client.search_registered_models, filter_string=query, page_token="bm90LWpzb24=")
    assert forged.error_code == "INVALID_PARAMETER_VALUE"


async def test_a_model_directory_on_a_disk_the_registry_reads_registers_and_loads_back(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None],
        kafka: Kafka, db: asyncpg.Pool, tmp_path: Path) -> None:
    """`mlflow.register_model` of a local model directory (the plain absolute path MLflow's local
    stores give) and `create_model_version` of a `file://` URI, both under the registry's artifact
    root (MODELREG_ARTIFACT_ROOTS, which ingest reads in place); anything else is refused."""
    name = f"mlflow-{RUN}-local"
    [root] = settings.artifact_root_paths
    local, model, features = await call(_sklearn_model_dir, Path(tempfile.mkdtemp(dir=root)))
    as_token(tokens["publisher"])
    created = await call(mlflow.register_model, str(local), name, await_registration_for=120)
    assert created.version == "1"
    published = (await kafka.wait_for("model.registered", for_model(name, 1)))[0]
    assert published.data["artifact"]["uri"] == file_uri(local)  # a directory: ends in '/'
    client = MlflowClient()
    first = await call(client.get_model_version, name, "1")
    assert first.status == "READY" and first.source == file_uri(local), first.status_message
    second = await call(client.create_model_version, name, (local / "model.pkl").as_uri(), await_creation_for=120)
    assert second.version == "2"
    second = await call(client.get_model_version, name, "2")  # the answer above was the pending one
    assert second.status == "READY" and second.source == (local / "model.pkl").as_uri(), second.status_message
    await _crown_and_load(settings, api, tokens, as_token, db, name, model, features)

    # Outside the root: another directory, a symlink out of the root, '..': refused, naming the root.
    as_token(tokens["publisher"])
    outside, _, _ = await call(_sklearn_model_dir, tmp_path)
    escape = local.parent / "escape"
    escape.symlink_to(outside, target_is_directory=True)
    for source in (str(outside), outside.as_uri(), str(escape), f"file://{local}/../../{outside.name}"):
        refused = await call(_refused, client.create_model_version, name, source)
        assert refused.error_code == "INVALID_PARAMETER_VALUE" and str(root) in refused.message, refused.message
    assert [v.version for v in await call(client.search_model_versions, f"name = '{name}'")] == ["2", "1"]


async def test_a_logged_model_of_a_local_tracking_store_registers_by_its_artifact_location(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow 3 logs a model in a run and registers `runs:/RUN/model` as `models:/m-ID`, which
    only the tracking store can resolve: refused, saying what to register instead; the logged
    model's artifact location (in a local store under the artifact root) then registers."""
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    name = f"mlflow-{RUN}-logged"
    [root] = settings.artifact_root_paths
    as_token(tokens["publisher"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (Path(tempfile.mkdtemp(dir=root)) / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store; the registry is modelreg's

    def log_model() -> tuple[str, str]:
        model = LogisticRegression().fit(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0, 1]))
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(model, name="model", serialization_format="pickle")
        return run.info.run_id, info.model_id

    run_id, model_id = await call(log_model)
    refused = await call(_refused, mlflow.register_model, f"runs:/{run_id}/model", name)
    assert refused.error_code == "INVALID_PARAMETER_VALUE" and "get_logged_model" in refused.message, refused.message
    location = (await call(MlflowClient().get_logged_model, model_id)).artifact_location
    assert location.startswith(root.as_uri())
    created = await call(mlflow.register_model, location, name, await_registration_for=120)
    version = await call(MlflowClient().get_model_version, name, created.version)
    assert version.status == "READY", version.status_message
