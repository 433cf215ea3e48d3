"""Where a logged model's files are, asked of the team's MLflow tracking server.

MLflow 3 registers a model logged in a run (`register_model("runs:/RUN/model")`,
`log_model(registered_model_name=...)`) by its logged model's id, `source="models:/m-ID"`;
only the tracking server knows that model's artifact location. With
MODELREG_API_MLFLOW_TRACKING_URI set, the API asks it over MLflow's REST API
(`GET /api/2.0/mlflow/logged-models/{id}`, or `runs/get` for a `runs:/RUN/PATH` source) and
registers the location it answers exactly like a direct source; the caller's own token is never
forwarded (the server's token is MODELREG_API_MLFLOW_TRACKING_TOKEN).

`tracking_reference` and `artifact_location` are the pure parts (tested without I/O);
`resolve` does the one HTTP request.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

from .errors import MlflowError, invalid, not_found

# A tracking server answers these in milliseconds; a hung one must not hold a registration.
TIMEOUT = aiohttp.ClientTimeout(total=15, sock_connect=5)
# A logged model or run document is a few KiB (tags, params); anything far bigger is not one.
MAX_ANSWER_BYTES = 1024 * 1024

_MODEL_ID = re.compile(r"^m-[A-Za-z0-9]{1,64}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")


@dataclass(frozen=True)
class TrackingReference:
    """A source only the tracking server can resolve: a logged model, or a path in a run."""
    model_id: str | None = None
    run_id: str | None = None
    path: str = ""

    @property
    def request_path(self) -> str:
        if self.model_id is not None:
            return f"/api/2.0/mlflow/logged-models/{quote(self.model_id, safe='')}"
        return f"/api/2.0/mlflow/runs/get?run_id={quote(str(self.run_id), safe='')}"

    @property
    def kind(self) -> str:
        return "logged model" if self.model_id is not None else "run"

    @property
    def described(self) -> str:
        return f"{self.kind} {self.model_id if self.model_id is not None else self.run_id}"


def tracking_reference(source: str) -> TrackingReference | None:
    """The reference in a `models:/m-ID` or `runs:/RUN_ID/PATH` source; None for any other
    source. A malformed one is INVALID_PARAMETER_VALUE (a registry URI such as
    `models:/NAME/1` names a version of some registry, not a logged model)."""
    if source.startswith("models:/"):
        model_id = source[len("models:/"):].strip("/")
        if not _MODEL_ID.match(model_id):
            raise invalid(f"source {source[:200]!r}: modelreg resolves models:/ sources that name an MLflow logged "
                          "model (models:/m-ID, what MLflow 3's register_model sends); register the files of a "
                          "model version instead")
        return TrackingReference(model_id=model_id)
    if source.startswith("runs:/"):
        run_id, _, path = source[len("runs:/"):].lstrip("/").partition("/")
        path = path.strip("/")
        if not _RUN_ID.match(run_id) or not path or posixpath.normpath(path) != path or path.startswith(".."):
            raise invalid(f"source {source[:200]!r}: expected runs:/RUN_ID/PATH (a path inside the run's artifacts, "
                          "without '..')")
        return TrackingReference(run_id=run_id, path=path)
    return None


@dataclass(frozen=True)
class Located:
    """Where the tracking server keeps a reference's files, and the run that logged them."""
    artifact_uri: str
    run_id: str | None


def artifact_location(reference: TrackingReference, answer: Any) -> Located:
    """What the tracking server's answer about `reference` says (a logged model's
    `model.info.artifact_uri` and `source_run_id`; a run's `run.info.artifact_uri` joined with
    the path), or ValueError saying what was wrong with the answer."""
    key = "model" if reference.model_id is not None else "run"
    info = answer.get(key, {}).get("info") if isinstance(answer, dict) and isinstance(answer.get(key), dict) else None
    uri = info.get("artifact_uri") if isinstance(info, dict) else None
    if not isinstance(uri, str) or not uri or len(uri) > 2048:
        raise ValueError(f"its answer about {reference.described} has no {key}.info.artifact_uri")
    if reference.run_id is not None:
        return Located(uri.rstrip("/") + "/" + reference.path, reference.run_id)
    run_id = info.get("source_run_id") if isinstance(info, dict) else None
    return Located(uri, run_id if isinstance(run_id, str) and _RUN_ID.match(run_id) else None)


async def _capped_body(answer: aiohttp.ClientResponse) -> bytes:
    """The answer's body, read no further than one byte past MAX_ANSWER_BYTES."""
    body = bytearray()
    async for chunk in answer.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            break
    return bytes(body)


def _mlflow_error(answer: bytes) -> str | None:
    try:
        parsed = json.loads(answer)
    except ValueError:
        return None
    return parsed.get("error_code") if isinstance(parsed, dict) else None


async def resolve(tracking_uri: str, token: SecretStr | None, reference: TrackingReference, *,
                  timeout: aiohttp.ClientTimeout = TIMEOUT) -> Located:
    """Where the tracking server says `reference`'s files are, or an MLflow error:
    RESOURCE_DOES_NOT_EXIST when it does not know it, TEMPORARILY_UNAVAILABLE when it cannot be
    reached, INTERNAL_ERROR when it refuses the registry's token or answers something else."""
    where = f"the MLflow tracking server {tracking_uri}"
    headers = {"Accept": "application/json", "User-Agent": "modelreg-api"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    try:
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False, headers=headers) as session, \
                session.get(tracking_uri + reference.request_path, allow_redirects=False) as answer:
            body = await _capped_body(answer)
            status = answer.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise MlflowError("TEMPORARILY_UNAVAILABLE", f"{where} (MODELREG_API_MLFLOW_TRACKING_URI), which locates "
                          f"{reference.described}, cannot be reached: {type(exc).__name__} {exc}".strip()) from None
    if len(body) > MAX_ANSWER_BYTES:
        raise MlflowError("INTERNAL_ERROR", f"{where} answered more than {MAX_ANSWER_BYTES} bytes about "
                          f"{reference.described}; not a {reference.kind} document")
    if status == 404 or _mlflow_error(body) == "RESOURCE_DOES_NOT_EXIST":
        raise not_found(f"{reference.described} not found on {where}: register a model logged there "
                        "(the registry resolves models:/ and runs:/ sources through that server)")
    if status in (401, 403):
        raise MlflowError("INTERNAL_ERROR", f"{where} refused modelreg's credentials (HTTP {status}) when asked "
                          f"about {reference.described}: set MODELREG_API_MLFLOW_TRACKING_TOKEN to a token it accepts")
    if status != 200:
        raise MlflowError("TEMPORARILY_UNAVAILABLE" if status >= 500 else "INTERNAL_ERROR",
                          f"{where} answered HTTP {status} about {reference.described}")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise MlflowError("INTERNAL_ERROR", f"{where} answered something other than JSON about "
                          f"{reference.described}") from None
    try:
        return artifact_location(reference, parsed)
    except ValueError as exc:
        raise MlflowError("INTERNAL_ERROR", f"{where}: {exc}") from None
