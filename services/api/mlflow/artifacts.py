"""The registry's copy of a version, served the way MLflow's HTTP artifact repository reads.

`get-download-uri` answers `<this server>/api/2.0/mlflow-artifacts/artifacts/models/NAME/VERSION`.
MLflow's client (`mlflow.store.artifact.http_artifact_repo.HttpArtifactRepository`) then lists
`GET /api/2.0/mlflow-artifacts/artifacts?path=...` and fetches each file from
`GET /api/2.0/mlflow-artifacts/artifacts/<path>`, sending the same MLFLOW_TRACKING_TOKEN (or
Basic credentials) as its registry calls: the client needs no S3 credentials, only a token that
may read the model, and it gets exactly the bytes that passed validation (the archive copy once
archived). A single-file artifact shows as a directory holding one file, named as its source
was; a directory model as the files of its manifest (checked against the version's sha256).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from shared.manifest import FileEntry, is_directory_uri, parse_manifest
from shared.storage import S3Location, parse_s3_uri

from ..resources import ApiResources, resources_of
from ..routes import verified_manifest
from . import mapping, store
from .credentials import caller, may_read
from .errors import MlflowRoute, invalid, not_found

ROOT = "/api/2.0/mlflow-artifacts/artifacts"

router = APIRouter(route_class=MlflowRoute, include_in_schema=False)


def download_uri(request: Request, name: str, version: int) -> str:
    return f"{str(request.base_url).rstrip('/')}{ROOT}/models/{quote(name)}/{version}"


@dataclass(frozen=True)
class ArtifactPath:
    name: str
    version: int
    inner: str  # path inside the version's artifact ('' for its root)


def parse_path(path: str) -> ArtifactPath:
    """`models/NAME/VERSION[/inner/path]`; ValueError for anything else (or a way out)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) < 3 or parts[0] != "models":
        raise ValueError(f"path {path[:200]!r}: expected models/NAME/VERSION[/PATH]")
    if any(p in (".", "..") or "\\" in p for p in parts):
        raise ValueError(f"path {path[:200]!r}: '.' and '..' are not allowed")
    return ArtifactPath(parts[1], mapping.parse_version(parts[2]), "/".join(parts[3:]))


@dataclass(frozen=True)
class Stored:
    """Where a version's bytes are: one object (shown as `filename`), or a directory's prefix
    and the files its verified manifest names (nothing else under the prefix is handed out)."""

    location: S3Location
    single: bool
    filename: str
    size: int | None
    files: dict[str, FileEntry]


async def _stored(request: Request, wanted: ArtifactPath) -> tuple[ApiResources, Stored]:
    res = resources_of(request)
    may_read(request, await caller(request), wanted.name)
    row = await store.version(res.pool, wanted.name, wanted.version)
    if row is None:
        raise not_found(f"Model Version (name={wanted.name}, version={wanted.version}) not found")
    if row.get("pending") or row.get("status") != "validated":
        raise invalid(f"{wanted.name} v{wanted.version} has not passed validation: its artifact is not handed out")
    archived = row.get("stage") == "archived" and bool(row.get("archive_uri"))
    uri = row["archive_uri"] if archived else row.get("artifact_uri")
    if not uri:
        raise not_found(f"{wanted.name} v{wanted.version} has no stored artifact")
    location = parse_s3_uri(uri)
    filename = posixpath.basename((row.get("source_uri") or "").rstrip("/")) or "artifact"
    if is_directory_uri(uri):
        _, text = await verified_manifest(res, row, location)
        files = {entry.path: entry for entry in parse_manifest(text)}
        return res, Stored(location, False, filename, None, files)
    head = await res.store.head(location)
    if head is None:
        raise not_found(f"{wanted.name} v{wanted.version}'s artifact is no longer stored")
    return res, Stored(location, True, filename, int(head.get("ContentLength") or 0), {})


def children(keys: list[tuple[str, int]], prefix: str) -> list[dict[str, Any]]:
    """The immediate children of `prefix` among object keys, as MLflow's artifact listing
    shows them: a name relative to the listed directory, files with their size."""
    files: dict[str, dict[str, Any]] = {}
    for key, size in keys:
        if not key.startswith(prefix) or key == prefix:
            continue
        rest = key[len(prefix):]
        head, slash, _ = rest.partition("/")
        if slash:
            files.setdefault(head, {"path": head, "is_dir": True})
        else:
            files[head] = {"path": head, "is_dir": False, "file_size": size}
    return [files[k] for k in sorted(files)]


@router.get(ROOT)
async def list_artifacts(request: Request, path: str = "") -> dict[str, Any]:
    try:
        wanted = parse_path(path)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    _, stored = await _stored(request, wanted)
    if stored.single:
        if wanted.inner in ("", stored.filename):
            return {"files": [{"path": stored.filename, "is_dir": False, "file_size": stored.size}]}
        return {"files": []}
    if wanted.inner in stored.files:  # a file: MLflow's listing of a file names the file itself
        entry = stored.files[wanted.inner]
        return {"files": [{"path": posixpath.basename(entry.path), "is_dir": False, "file_size": entry.size_bytes}]}
    prefix = wanted.inner.rstrip("/") + "/" if wanted.inner else ""
    return {"files": children([(e.path, e.size_bytes) for e in stored.files.values()], prefix)}


@router.get(ROOT + "/{path:path}")
async def download_artifact(request: Request, path: str) -> StreamingResponse:
    try:
        wanted = parse_path(path)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    res, stored = await _stored(request, wanted)
    if stored.single and wanted.inner == stored.filename:
        location, size = stored.location, stored.size
    elif not stored.single and wanted.inner in stored.files:
        location = S3Location(stored.location.bucket, stored.location.key + wanted.inner)
        size = stored.files[wanted.inner].size_bytes
    else:
        raise not_found(f"{wanted.name} v{wanted.version} has no file {wanted.inner!r}")
    return StreamingResponse(res.store.stream(location), media_type="application/octet-stream",
                             headers={"Content-Length": str(size or 0)})
