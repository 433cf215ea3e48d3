"""An unmodified MLflow 3 script with the team's tracking server and modelreg as the registry:
`mlflow.sklearn.log_model` in a run on a real `mlflow server` (sqlite backend, artifacts in a
local root under the registry's MODELREG_ARTIFACT_ROOTS, not proxied), then
`mlflow.register_model("runs:/RUN/model", NAME)`, which MLflow 3 sends as `models:/m-ID`: the
API asks the tracking server where that logged model's files are (MODELREG_API_MLFLOW_TRACKING_URI)
and registers them; validated, crowned by the policy after QA, loaded back by
`models:/NAME@champion`. Ids the server does not know and locations the registry may not read
get MLflow's usual errors. The pure parts (services/api/mlflow/tracking.py) are tested first,
without I/O.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import mlflow
import pytest
from aiohttp import web
from mlflow import MlflowClient
from pydantic import SecretStr

from services.api import auth
from services.api.app import ApiService
from services.api.mlflow import tracking
from services.api.mlflow.errors import MlflowError
from shared.local_artifacts import file_uri
from shared.settings import Settings
from tests.integration.conftest import running_api
from tests.integration.test_mlflow_api import _crown_and_load, _refused, as_token, call
from tests.integration.test_mlflow_import import running_mlflow_server
from tests.support import Kafka, eventually, for_model

__all__ = ["as_token"]  # a fixture this module uses

RUN = uuid.uuid4().hex[:6]
MODEL_ID = "m-" + "0123456789abcdef" * 2


# ---------------------------------------------------------------------------- pure parts


def test_logged_model_and_run_sources_are_references_and_others_are_not() -> None:
    assert tracking.tracking_reference(f"models:/{MODEL_ID}") == tracking.TrackingReference(model_id=MODEL_ID)
    assert tracking.tracking_reference("runs:/abc123/model/sub") == tracking.TrackingReference(run_id="abc123",
                                                                                             path="model/sub")
    for direct in ("s3://bucket/model/", "file:///data/model", "/data/model", "mlflow-artifacts:/1/x"):
        assert tracking.tracking_reference(direct) is None, direct
    for bad in ("models:/fraud/1", "models:/fraud@champion", "models:/m-../x", "runs:/abc123",
                "runs:/abc123/../other", "runs:/a b/model", "runs://model"):
        with pytest.raises(MlflowError) as refused:
            tracking.tracking_reference(bad)
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE", bad


def test_the_artifact_location_is_read_from_the_tracking_servers_answer() -> None:
    model = tracking.TrackingReference(model_id=MODEL_ID)
    logged = {"artifact_uri": "s3://b/1/models/m/artifacts", "source_run_id": "abc"}
    assert tracking.artifact_location(model, {"model": {"info": logged}}) \
        == tracking.Located("s3://b/1/models/m/artifacts", "abc")
    assert tracking.artifact_location(model, {"model": {"info": {**logged, "source_run_id": "../x"}}}).run_id is None
    run = tracking.TrackingReference(run_id="abc", path="model")
    assert tracking.artifact_location(run, {"run": {"info": {"artifact_uri": "file:///r/1/abc/artifacts/"}}}) \
        == tracking.Located("file:///r/1/abc/artifacts/model", "abc")
    for answer in ({}, [], {"model": {"info": {}}}, {"model": {"info": {"artifact_uri": 7}}},
                   {"run": {"info": {"artifact_uri": "file:///x"}}}, {"model": {"info": {"artifact_uri": "x" * 3000}}}):
        with pytest.raises(ValueError, match="artifact_uri"):
            tracking.artifact_location(model, answer)


async def test_the_tracking_server_is_asked_with_the_registrys_token_and_its_answers_are_checked() -> None:
    """`resolve` against a local HTTP server standing in for the tracking server's failures
    (the real one is used below): the bearer token sent, and each bad answer an MLflow error."""
    seen: list[dict[str, str]] = []
    location = {"model": {"info": {"artifact_uri": "s3://models/1/models/m/artifacts", "source_run_id": "r1"}}}
    answers: dict[str, Callable[[], web.StreamResponse]] = {  # a response is sent once: made per request
        "m-good": lambda: web.json_response(location),
        "m-gone": lambda: web.json_response({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}, status=404),
        "m-locked": lambda: web.json_response({"error_code": "UNAUTHENTICATED"}, status=401),
        "m-broken": lambda: web.Response(status=500),
        "m-html": lambda: web.Response(text="<html>", content_type="text/html"),
        "m-huge": lambda: web.Response(body=b" " * (tracking.MAX_ANSWER_BYTES + 10)),
    }

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        model_id = request.path.removeprefix("/api/2.0/mlflow/logged-models/")
        if model_id == "m-slow":
            await asyncio.sleep(2)
        return answers.get(model_id, lambda: web.Response(status=418))()

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        found = await tracking.resolve(url, SecretStr("mlflow-secret"), tracking.TrackingReference(model_id="m-good"))
        assert found == tracking.Located("s3://models/1/models/m/artifacts", "r1")
        assert seen[-1]["Authorization"] == "Bearer mlflow-secret"
        await tracking.resolve(url, None, tracking.TrackingReference(model_id="m-good"))
        assert "Authorization" not in seen[-1]
        for model_id, code, says in (("m-gone", "RESOURCE_DOES_NOT_EXIST", "not found"),
                                     ("m-locked", "INTERNAL_ERROR", "MODELREG_API_MLFLOW_TRACKING_TOKEN"),
                                     ("m-broken", "TEMPORARILY_UNAVAILABLE", "HTTP 500"),
                                     ("m-html", "INTERNAL_ERROR", "other than JSON"),
                                     ("m-huge", "INTERNAL_ERROR", "more than"),
                                     ("m-teapot", "INTERNAL_ERROR", "HTTP 418")):
            with pytest.raises(MlflowError) as failed:
                await tracking.resolve(url, None, tracking.TrackingReference(model_id=model_id))
            assert failed.value.error_code == code and says in failed.value.message, (model_id, failed.value.message)
        with pytest.raises(MlflowError) as slow:
            await tracking.resolve(url, None, tracking.TrackingReference(model_id="m-slow"),
                                   timeout=aiohttp.ClientTimeout(total=0.5))
        assert slow.value.error_code == "TEMPORARILY_UNAVAILABLE" and "cannot be reached" in slow.value.message
    finally:
        await runner.cleanup()
    with pytest.raises(MlflowError) as down:  # nothing listens there any more
        await tracking.resolve(url, None, tracking.TrackingReference(model_id="m-good"))
    assert down.value.error_code == "TEMPORARILY_UNAVAILABLE" and url in down.value.message


# ---------------------------------------------------------------------------- the real servers


@pytest.fixture(scope="module")
async def tracking_server(settings: Settings,
                          tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, Path]]:
    """A real tracking server whose artifact root is a local directory under the registry's
    artifact root (not proxied: clients write there, the registry reads there). Yields its URL
    and that directory."""
    [root] = settings.artifact_root_paths
    artifacts = Path(tempfile.mkdtemp(dir=root, prefix="mlflow-tracking-"))
    async with running_mlflow_server(tmp_path_factory.mktemp("mlflow-tracking"), "--default-artifact-root",
                                     str(artifacts), "--no-serve-artifacts") as url:
        yield url, artifacts


@pytest.fixture(scope="module")
async def api(settings: Settings, pipeline: Any, tracking_server: tuple[str, Path]) -> AsyncIterator[ApiService]:
    async with running_api(settings, open_reads=False, mlflow_tracking_uri=tracking_server[0]) as service:
        yield service


@pytest.fixture(scope="module")
async def tokens(db: asyncpg.Pool) -> dict[str, str]:
    made = {}
    for role in ("publisher", "evaluator", "reader"):
        made[role], _ = await auth.create(db, name=f"tracking-{role}-{RUN}", role=role)
    return made


@pytest.fixture
def tracked(as_token: Any, tokens: dict[str, str], tracking_server: tuple[str, Path],
            monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline's environment: runs and logged models on the tracking server, the registry is
    modelreg (with the publisher's token, which MLflow also sends to the tracking server)."""
    as_token(tokens["publisher"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server[0])


def _train() -> tuple[Any, Any]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    features = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1], [0.1, 0.8], [0.8, 0.3]])
    return LogisticRegression().fit(features, np.array([0, 1, 0, 1, 0, 1])), features


def _experiment() -> str:
    """This module's experiment on the tracking server (not set_experiment: no process-wide state)."""
    client, experiment = MlflowClient(), f"tracking-sources-{RUN}"
    found = client.get_experiment_by_name(experiment)
    return str(found.experiment_id) if found else client.create_experiment(experiment)


def _log_in_a_run(model: Any, **log_options: Any) -> tuple[str, str]:
    """The pipeline's usual code: a run that logs the model; (run id, logged model id)."""
    import mlflow.sklearn

    with mlflow.start_run(experiment_id=_experiment()) as run:
        # Requirements given, so MLflow does not start a process to infer them.
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="pickle",
                                        pip_requirements=["scikit-learn"], **log_options)
    return str(run.info.run_id), str(info.model_id)


@pytest.mark.slow  # a real mlflow server: about 80 s with its start
async def test_a_model_logged_on_the_tracking_server_registers_by_its_run_and_loads_by_champion(
        settings: Settings, api: ApiService, tokens: dict[str, str], as_token: Any, tracked: None,
        tracking_server: tuple[str, Path], kafka: Kafka, db: asyncpg.Pool) -> None:
    name = f"tracked-{RUN}-fraud"
    model, features = _train()
    run_id, model_id = await call(_log_in_a_run, model)
    location = (await call(MlflowClient().get_logged_model, model_id)).artifact_location
    directory = Path(location.removeprefix("file://"))
    assert directory.is_relative_to(tracking_server[1]) and (directory / "MLmodel").is_file(), location

    # register_model("runs:/..."): MLflow 3 sends models:/m-ID; the answer is the pending version
    created = await call(mlflow.register_model, f"runs:/{run_id}/model", name, await_registration_for=0)
    assert (created.version, created.status) == ("1", "PENDING_REGISTRATION")
    assert created.source == f"models:/{model_id}" and created.run_id == run_id
    published = (await kafka.wait_for("model.registered", for_model(name, 1)))[0]
    assert published.data["artifact"]["uri"] == file_uri(directory)  # ends in '/': a directory model
    client = MlflowClient()
    ready = await eventually(lambda: call(_ready, client, name, "1"), timeout=120)
    # once stored, `source` is where the registry read the files; the logged model is a label
    assert ready.source == file_uri(directory) and ready.tags.get("mlflow.model_id") == model_id
    assert ready.user_id == f"tracking-publisher-{RUN}"
    logged = await call(client.get_logged_model, model_id)  # MLflow links the logged model to the version
    assert '"version": "1"' in logged.tags.get("mlflow.modelVersions", "")

    # log_model(registered_model_name=...): the same path, awaited by MLflow's client
    second_run, second_id = await call(_log_in_a_run, model, registered_model_name=name)
    second = await call(client.get_model_version, name, "2")
    assert second.status == "READY", second.status_message
    assert second.tags.get("mlflow.model_id") == second_id and second_id in second.source
    assert second.run_id == second_run  # MLflow sent none: the tracking server's source_run_id

    # a QA result lets the policy crown v1; a reader loads it back by its alias and it predicts
    await _crown_and_load(settings, api, tokens, as_token, db, name, model, features)


@pytest.mark.slow
async def test_a_runs_source_sent_as_such_registers_the_files_logged_in_that_run(
        api: ApiService, tracked: None, tracking_server: tuple[str, Path], tmp_path: Path) -> None:
    """`create_model_version(name, "runs:/RUN/model")` (MLflow 2 style: the model's files logged
    as the run's artifacts) is located by the run's artifact_uri."""
    import mlflow.sklearn

    name = f"tracked-{RUN}-run-files"
    model, _ = _train()

    def log_files() -> str:
        mlflow.sklearn.save_model(model, str(tmp_path / "model"), serialization_format="pickle",
                                  pip_requirements=["scikit-learn"])
        with mlflow.start_run(experiment_id=_experiment()) as run:
            mlflow.log_artifacts(str(tmp_path / "model"), "model")
        return str(run.info.run_id)

    run_id = await call(log_files)
    client = MlflowClient()
    await call(client.create_registered_model, name)
    await call(client.create_model_version, name, f"runs:/{run_id}/model", run_id, await_creation_for=120)
    version = await call(client.get_model_version, name, "1")
    assert version.status == "READY", version.status_message
    artifacts = (await call(client.get_run, run_id)).info.artifact_uri
    assert version.source == file_uri(Path(artifacts.removeprefix("file://")) / "model") and version.run_id == run_id
    assert "mlflow.model_id" not in version.tags
    missing = await call(_refused, client.create_model_version, name, f"runs:/{run_id}/elsewhere", run_id)
    assert missing.error_code == "INVALID_PARAMETER_VALUE" and "elsewhere" in missing.message, missing.message


def _ready(client: MlflowClient, name: str, version: str) -> Any:
    found = client.get_model_version(name, version)
    assert found.status != "FAILED_REGISTRATION", found.status_message
    return found if found.status == "READY" else None


@pytest.mark.slow
async def test_unknown_and_unreadable_logged_models_get_mlflows_errors(
        settings: Settings, api: ApiService, tracked: None, tracking_server: tuple[str, Path],
        tmp_path: Path) -> None:
    name = f"tracked-{RUN}-refused"
    # an id the tracking server does not know: MLflow's usual "does not exist"
    unknown = await call(_refused, mlflow.register_model, f"models:/{MODEL_ID}", name)
    assert unknown.error_code == "RESOURCE_DOES_NOT_EXIST" and MODEL_ID in unknown.message, unknown.message

    # logged models the tracking server keeps where the registry may not read: outside its
    # artifact root, and behind the server's artifact proxy
    [root] = settings.artifact_root_paths
    client = MlflowClient()
    for where, says in ((tmp_path.as_uri(), str(root)), ("mlflow-artifacts:/elsewhere", "--default-artifact-root")):
        experiment = await call(client.create_experiment, f"tracking-{RUN}-{uuid.uuid4().hex[:6]}",
                                artifact_location=where)
        logged = await call(client.create_logged_model, experiment, name="model")
        refused = await call(_refused, mlflow.register_model, f"models:/{logged.model_id}", name)
        assert refused.error_code == "INVALID_PARAMETER_VALUE", refused.message
        assert logged.model_id in refused.message and says in refused.message, refused.message
    # nothing was registered, no number held
    assert await call(client.search_model_versions, f"name = '{name}'") == []
