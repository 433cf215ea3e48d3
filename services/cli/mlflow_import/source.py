"""Reading an MLflow tracking server with MLflow's own client: registered models, their
versions, the source runs' metrics and params, and each version's artifacts.

The client is blocking and retries a dead server for minutes by default; the server is probed
once with a short timeout first, and every MLflow failure becomes a `UserError` naming it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from services.cli.errors import UserError

from .plan import SourceVersion

T = TypeVar("T")
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class MlflowModel:
    name: str
    description: str | None
    tags: dict[str, str]
    aliases: dict[str, int]  # alias -> version


@dataclass(frozen=True)
class MlflowVersion:
    name: str
    version: int
    stage: str
    status: str
    aliases: tuple[str, ...]
    run_id: str | None
    source: str | None
    description: str | None
    user_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    def for_plan(self) -> SourceVersion:
        return SourceVersion(self.version, self.stage, self.aliases, ready=self.status == "READY")


def check_tracking_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--tracking-uri {uri!r}: give the MLflow tracking server's http(s):// URL, "
                        "e.g. http://mlflow.internal:5000")
    return uri.rstrip("/")


def probe(uri: str) -> None:
    """One quick request, so a wrong URL is one clear line, not minutes of client retries."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=PROBE_TIMEOUT) as answer:
            answer.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # an older server, or one behind a proxy without /health: the API decides
            return
        if exc.code in (401, 403):
            raise UserError(f"the MLflow server at {uri} refused us ({exc.code}): set MLFLOW_TRACKING_TOKEN or "
                            "MLFLOW_TRACKING_USERNAME/PASSWORD") from None
        raise UserError(f"the MLflow server at {uri} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise UserError(f"cannot reach the MLflow tracking server at {uri}: {why}") from None


@contextlib.contextmanager
def _mlflow_errors(uri: str, doing: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        message = str(getattr(exc, "message", exc)).strip().splitlines()[0][:500]
        raise UserError(f"MLflow at {uri}, {doing}: {message}") from None
    except (OSError, ConnectionError) as exc:
        raise UserError(f"MLflow at {uri}, {doing}: {exc}") from None


class MlflowSource:
    def __init__(self, uri: str) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise UserError("`modelreg import mlflow` needs MLflow's client: pip install mlflow-skinny") from None
        # A server that dies mid-import should fail the command in seconds, not after the
        # client's default of minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _call(self, doing: str, call: Callable[[], T]) -> T:
        with _mlflow_errors(self.uri, doing):
            return call()

    def models(self) -> list[MlflowModel]:
        found: list[MlflowModel] = []
        token = None
        while True:
            page = self._call("listing registered models", functools.partial(
                self.client.search_registered_models, max_results=200, page_token=token))
            for model in page:
                found.append(MlflowModel(model.name, model.description or None, dict(model.tags or {}),
                                         {alias: int(v) for alias, v in (model.aliases or {}).items()}))
            token = page.token
            if not token:
                return found

    def versions(self, name: str) -> list[MlflowVersion]:
        quoted = name.replace("'", "\\'")
        # Searches leave aliases out (MLflow fills them only on get): the model's own list says.
        model = self._call(f"reading {name!r}", lambda: self.client.get_registered_model(name))
        aliases: dict[int, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(int(version), []).append(alias)
        found: list[MlflowVersion] = []
        token = None
        while True:
            page = self._call(f"listing the versions of {name!r}",
                              functools.partial(self.client.search_model_versions,
                                                f"name = '{quoted}'", max_results=1000, page_token=token))
            for v in page:
                if v.name != name:
                    continue
                found.append(MlflowVersion(
                    name=v.name, version=int(v.version), stage=v.current_stage or "None", status=v.status or "READY",
                    aliases=tuple(sorted({*(v.aliases or ()), *aliases.get(int(v.version), [])})),
                    run_id=v.run_id or None, source=v.source or None,
                    description=v.description or None, user_id=v.user_id or None, tags=dict(v.tags or {})))
            token = page.token
            if not token:
                return sorted(found, key=lambda v: v.version)

    def run_facts(self, run_id: str | None) -> tuple[dict[str, float], dict[str, Any]]:
        """The source run's latest metrics and its params; nothing when the run is gone or
        unreadable (a version outlives its run in many registries)."""
        if run_id is None:
            return {}, {}
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return {}, {}
        return dict(run.data.metrics), dict(run.data.params)

    def download(self, name: str, version: int, into: Path) -> Path:
        """The version's artifacts (a model directory, or one file) under `into`."""
        import mlflow.artifacts

        uri = self._call(f"asking where {name} v{version} is stored",
                         lambda: self.client.get_model_version_download_uri(name, str(version)))
        into.mkdir(parents=True, exist_ok=True)
        local = self._call(f"downloading {name} v{version} from {uri}", lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(into), tracking_uri=self.uri))
        return Path(local)
