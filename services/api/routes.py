"""The HTTP API under /api/v1: reads from the registry view, writes as events.

Handlers parse, check the caller, run one query or publish one event, and shape the answer;
the SQL is in `queries`, the decisions in `explain` and `production`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any

from botocore.exceptions import ClientError
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from shared.events import MODEL_NAME_PATTERN, ArtifactSpec, ModelRegisteredData, Stage
from shared.manifest import (
    MAX_MANIFEST_BYTES,
    FileEntry,
    is_directory_uri,
    manifest_digest,
    manifest_key,
    parse_manifest,
    path_problem,
)
from shared.storage import S3Location, is_missing, parse_s3_uri

from . import auth, cursor, documents, production, queries
from .auth import Identity
from .problems import Problem, bad_request, from_validation_errors, not_found
from .resources import ApiResources, resources_of
from .schemas import (
    Accepted,
    ArtifactLink,
    AuditPage,
    EvaluationRequest,
    Explanation,
    Health,
    ModelDetail,
    ModelPage,
    Production,
    PromotionRequest,
    VersionDetail,
)

MAX_VERSION = 2**31 - 1
UPLOAD_CHUNK = 1024 * 1024
_ACTION = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_FORMAT = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,31}$")
_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
bearer_scheme = HTTPBearer(auto_error=False, description="a token from `modelreg token create`")

NameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, max_length=128, description="model name")]
VersionParam = Annotated[int, Path(ge=1, le=MAX_VERSION, description="version number")]


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {400: "invalid input", 401: "no token, or an unknown, revoked or expired one",
                 403: "the token's role or model scope does not allow it", 404: "not found",
                 409: "the version is not in a state that allows it (not validated)",
                 411: "an upload without Content-Length", 413: "request too large",
                 503: "Kafka or S3 did not answer; try again"}
    return {status: {"description": described.get(status, "error"),
                     "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for status in statuses}


READ_ERRORS = _problem_responses(400, 401, 403, 404)
WRITE_ERRORS = _problem_responses(400, 401, 403, 404, 411, 413, 503)
MOVE_ERRORS = _problem_responses(400, 401, 403, 404, 409, 503)


# ---------------------------------------------------------------------------- callers


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="modelreg"'})


async def caller(request: Request,
                 _credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> Identity | None:
    """The token's identity; None when no token was sent. A bad or expired token is refused,
    never ignored, and so is a token used on a model outside its scope: every route with a
    `{name}` in its path is checked here, so none can forget it."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    token = auth.bearer(header)
    if not token:
        raise _unauthorized("the Authorization header must be `Bearer <token>`")
    identity = await auth.lookup(resources_of(request).pool, token)
    if identity is None:
        raise _unauthorized("the token is unknown or revoked")
    if identity.expired(datetime.now(UTC)):
        assert identity.expires_at is not None
        raise _unauthorized(f"token {identity.name!r} expired at {identity.expires_at.astimezone(UTC).isoformat()}; "
                            "ask for a new one (`modelreg token create`)")
    # the model a route names: in its path, or as the audit log's `model` filter
    scope_error = out_of_scope(identity, request.path_params.get("name") or request.query_params.get("model"))
    if scope_error is not None:
        raise scope_error
    return identity


def out_of_scope(identity: Identity, model: str | None) -> Problem | None:
    """The 403 for a token used on a model its globs do not match (None: in scope)."""
    if model is None or identity.may_touch(model):
        return None
    return Problem(403, f"token {identity.name!r} is limited to models {', '.join(identity.models)}; "
                        f"{model[:128]!r} is not one of them", kind="out-of-scope")


async def reader(request: Request, identity: Identity | None = Depends(caller)) -> Identity | None:
    if identity is None and not resources_of(request).api.open_reads:
        raise _unauthorized("reads need a token (MODELREG_API_OPEN_READS is off): send `Authorization: Bearer <token>`")
    return identity


def _in_scope(identity: Identity | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A listing as a scoped token may see it: only its models (the cursor still pages the
    whole listing, so a page may come back shorter than `limit`)."""
    return rows if identity is None else [r for r in rows if identity.may_touch(r["name"])]


def requires(action: auth.Action) -> Any:
    role = auth.ROLE_FOR[action]
    wanted = f"role {role}" if role == "admin" else f"role {role} (or admin)"

    async def check(identity: Identity | None = Depends(caller)) -> Identity:
        if identity is None:
            raise _unauthorized(f"this needs a token with {wanted}: send `Authorization: Bearer <token>`")
        if not auth.allows(identity.role, action):
            raise Problem(403, f"token {identity.name!r} has role {identity.role}, which may not {action}; "
                               f"this needs {wanted}", kind="forbidden")
        return identity
    return check


def _validated_or_409(row: dict[str, Any], what: str) -> None:
    """Only a version whose artifact passed validation may be handed out or moved up."""
    if row["status"] != "validated":
        raise Problem(409, f"{row['name']} v{row['version']} has not passed validation (status "
                           f"{row['status']}): {what}", kind="not-validated")


Resources = Annotated[ApiResources, Depends(resources_of)]


# ---------------------------------------------------------------------------- parsing


def _time(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        return production.parse_rfc3339(text)
    except production.TimeError as exc:
        raise bad_request(f"{what}: {exc}", kind="invalid-time") from None


def _tag(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    key, sep, value = text.partition("=")
    if not sep or not 1 <= len(key) <= 128 or len(value) > 1024 or "\x00" in text:
        raise bad_request(f"tag: expected KEY=VALUE (key 1-128 characters, value at most 1024), got {text[:80]!r}")
    return key, value


def _position(res: ApiResources, token: str | None, scope: str) -> dict[str, Any] | None:
    if token is None:
        return None
    try:
        return cursor.decode(token, res.cursor_key, scope)
    except cursor.CursorError as exc:
        raise bad_request(f"cursor: {exc}", kind="invalid-cursor") from None


@contextlib.contextmanager
def _found() -> Any:
    try:
        yield
    except documents.NotFound as exc:
        raise not_found(exc.detail) from None


async def _version_or_404(res: ApiResources, name: str, version: int) -> dict[str, Any]:
    with _found():
        return await documents.version_row(res.pool, name, version)


# ---------------------------------------------------------------------------- reads


@router.get("/health", response_model=Health, tags=["service"], summary="The API answers and reaches PostgreSQL")
async def health(res: Resources) -> dict[str, Any]:
    await res.pool.fetchval("SELECT 1")
    return {"status": "ok", "policy_revision": res.policy.revision}


@router.get("/keys", tags=["service"], summary="The services' public signing keys (JWKS)",
            description="Every event a registry service emits is signed (Ed25519 over the RFC 8785 "
                        "canonical JSON of the CloudEvent without `signature` and `signingkey`); "
                        "`modelreg_event_types` says which types each key may sign. Public: no token.")
async def signing_keys(res: Resources, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "public, max-age=300"
    return res.keyring.to_jwks()


@router.get("/models", response_model=ModelPage, responses=READ_ERRORS, tags=["models"],
            summary="Search models by name prefix, tag or stage")
async def list_models(
    res: Resources,
    _reader: Identity | None = Depends(reader),
    prefix: str | None = Query(None, max_length=128, pattern=r"^[a-z0-9._-]*$", description="name prefix"),
    tag: str | None = Query(None, max_length=1200, description="KEY=VALUE: some version carries this tag"),
    stage: Stage | None = Query(None, description="some version is in this stage"),
    limit: int = Query(50, ge=1, le=500),
    cursor_: str | None = Query(None, alias="cursor", max_length=1024, description="from `next_cursor`"),
) -> dict[str, Any]:
    scope = cursor.scope_of("models", {"prefix": prefix, "tag": tag, "stage": stage})
    position = _position(res, cursor_, scope)
    after = position.get("after") if position else None
    if position is not None and not isinstance(after, str):
        raise bad_request("cursor: the cursor is not one this API returned", kind="invalid-cursor")
    rows = await queries.list_models(res.pool, prefix=prefix or None, tag=_tag(tag), stage=stage, after=after,
                                     limit=limit + 1)
    more, rows = len(rows) > limit, rows[:limit]
    return {"items": _in_scope(_reader, rows),
            "next_cursor": cursor.encode({"after": rows[-1]["name"]}, res.cursor_key, scope) if more else None}


@router.get("/models/{name}", response_model=ModelDetail, responses=READ_ERRORS, tags=["models"],
            summary="A model: its versions, champion and the policy rule that applies")
async def get_model(name: NameParam, res: Resources, _reader: Identity | None = Depends(reader)) -> dict[str, Any]:
    return await model_document(res, name)


async def model_document(res: ApiResources, name: str) -> dict[str, Any]:
    with _found():
        return await documents.model_document(res.pool, res.policy, name)


@router.get("/models/{name}/versions/{version}", response_model=VersionDetail, responses=READ_ERRORS,
            tags=["models"], summary="One version: metadata, artifact, checks, evaluations, stage history")
async def get_version(name: NameParam, version: VersionParam, res: Resources,
                      _reader: Identity | None = Depends(reader)) -> dict[str, Any]:
    return await version_document(res, name, version)


async def version_document(res: ApiResources, name: str, version: int) -> dict[str, Any]:
    with _found():
        return await documents.version_document(res.pool, name, version)


@router.get("/models/{name}/production", response_model=Production,
            responses={304: {"description": "the champion is still the one named by If-None-Match"},
                       **READ_ERRORS},
            tags=["deployment"], summary="The version in production (now, or `at` a moment)")
async def get_production(
    name: NameParam, request: Request, response: Response, res: Resources,
    _reader: Identity | None = Depends(reader),
    at: str | None = Query(None, max_length=64, description="RFC 3339 date-time: which version was in production then"),
    if_none_match: str | None = Header(None, max_length=4096),
) -> Any:
    moment = _time(at, "at")
    if moment is not None:
        changes = await queries.stage_changes(res.pool, name)
        reign = production.production_at(changes, moment)
        if reign is None:
            if await queries.get_model(res.pool, name) is None:
                raise not_found(f"no model named {name!r}")
            raise not_found(f"no version of {name!r} was in production at {moment.isoformat()}")
        row = await queries.get_version(res.pool, name, reign.version) or {}
        until = next((r.until for r in production.reigns(changes) if r.since_seq == reign.since_seq), None)
        return {"name": name, "version": reign.version, "since": reign.since, "until": until, "at": moment,
                "artifact": documents.artifact_doc({**row, "stage": row.get("stage")})}
    found = await res.cache.lookup(name, lambda: queries.production(res.pool, name))
    if found is None:
        raise not_found(f"no model named {name!r}")
    if found["champion"] is None:
        raise not_found(f"no version of {name!r} is in production")
    tag = production.etag(name, found["champion"], found["champion_seq"])
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if production.not_modified(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return {"name": name, "version": found["champion"], "since": found["since"],
            "artifact": documents.artifact_doc({**found, "stage": "production"})}


@router.get("/models/{name}/versions/{version}/explain", response_model=Explanation, responses=READ_ERRORS,
            tags=["models"], summary="Each promotion gate of the policy: does it hold for this version, and why")
async def explain_version(name: NameParam, version: VersionParam, res: Resources,
                          _reader: Identity | None = Depends(reader)) -> dict[str, Any]:
    return await explanation(res, name, version)


async def explanation(res: ApiResources, name: str, version: int) -> dict[str, Any]:
    with _found():
        return await documents.explanation(res.pool, res.policy, name, version)


@router.get("/models/{name}/versions/{version}/artifact", response_model=ArtifactLink,
            responses={**READ_ERRORS, **_problem_responses(409)},
            tags=["deployment"], summary="A presigned download URL of the artifact (the archive copy when archived)")
async def artifact_link(name: NameParam, version: VersionParam, res: Resources,
                        _reader: Identity | None = Depends(reader)) -> dict[str, Any]:
    return await presigned_artifact(res, name, version)


async def presigned_artifact(res: ApiResources, name: str, version: int) -> dict[str, Any]:
    row = await _version_or_404(res, name, version)
    _validated_or_409(row, "only validated artifacts are downloadable")
    archived = row["stage"] == "archived" and bool(row["archive_uri"])
    uri = row["archive_uri"] if archived else row["artifact_uri"]
    if not uri:
        raise not_found(f"{name} v{version} has no stored artifact (status {row['status']})")
    try:
        location = parse_s3_uri(uri)
    except ValueError:
        raise not_found(f"{name} v{version}'s artifact {uri} is not in S3") from None
    if is_directory_uri(uri):
        return await _presigned_directory(res, row, location, archived)
    if await res.store.head(location) is None:
        raise not_found(f"{name} v{version}'s artifact is no longer stored at {uri}")
    seconds = res.api.presign_seconds
    url = await (await res.store.boto()).generate_presigned_url(
        "get_object", Params={"Bucket": location.bucket, "Key": location.key}, ExpiresIn=seconds)
    return {"url": url, "expires_in": seconds, "expires_at": datetime.now(UTC) + timedelta(seconds=seconds),
            "uri": uri, "sha256": row["sha256"], "size_bytes": row["size_bytes"], "archived": archived}


async def _presigned_directory(res: ApiResources, row: Any, prefix: S3Location, archived: bool) -> dict[str, Any]:
    """A directory artifact: its stored manifest, checked against the version's sha256 (so it
    needs no trust of its own), and a presigned URL per file with the digest it must have."""
    where, text = await verified_manifest(res, row, prefix)
    seconds = res.api.presign_seconds

    async def presign(key: str) -> str:
        url: str = await (await res.store.boto()).generate_presigned_url(
            "get_object", Params={"Bucket": prefix.bucket, "Key": key}, ExpiresIn=seconds)
        return url

    files = [{"path": e.path, "sha256": e.sha256, "size_bytes": e.size_bytes, "url": await presign(prefix.key + e.path)}
             for e in parse_manifest(text)]
    return {"url": await presign(where.key), "expires_in": seconds,
            "expires_at": datetime.now(UTC) + timedelta(seconds=seconds), "uri": prefix.uri,
            "sha256": row["sha256"], "size_bytes": row["size_bytes"], "archived": archived, "files": files}


async def verified_manifest(res: ApiResources, row: Any, prefix: S3Location) -> tuple[S3Location, bytes]:
    """Where a directory artifact's manifest is stored, and its bytes, once they hash to the
    version's sha256 (also the MLflow API's list of what it may hand out)."""
    where = S3Location(prefix.bucket, manifest_key(prefix.key))
    text = bytearray()
    try:
        async for chunk in res.store.stream(where):
            text += chunk
            if len(text) > MAX_MANIFEST_BYTES:
                break
    except ClientError as exc:
        if not is_missing(exc):
            raise
        raise not_found(f"{row['name']} v{row['version']}'s manifest is no longer stored at {where.uri}") from None
    if hashlib.sha256(text).hexdigest() != row["sha256"]:
        raise Problem(409, f"the stored manifest {where.uri} does not hash to the version's sha256 {row['sha256']}",
                      kind="integrity")
    return where, bytes(text)


@router.get("/audit", response_model=AuditPage, responses=READ_ERRORS, tags=["audit"],
            summary="The audit log, filtered; pages by seq")
async def audit(
    res: Resources,
    _reader: Identity | None = Depends(reader),
    model: str | None = Query(None, pattern=MODEL_NAME_PATTERN, max_length=128),
    version: int | None = Query(None, ge=1, le=MAX_VERSION),
    action: str | None = Query(None, pattern=_ACTION, max_length=64),
    since: str | None = Query(None, max_length=64, description="RFC 3339: records at or after"),
    until: str | None = Query(None, max_length=64, description="RFC 3339: records before"),
    order: str = Query("asc", pattern="^(asc|desc)$", description="asc: oldest first; desc: newest first"),
    limit: int = Query(50, ge=1, le=500),
    cursor_: str | None = Query(None, alias="cursor", max_length=1024),
) -> dict[str, Any]:
    start, end = _time(since, "since"), _time(until, "until")
    scope = cursor.scope_of("audit", {"model": model, "version": version, "action": action, "since": since,
                                      "until": until, "order": order})
    position = _position(res, cursor_, scope)
    after = position.get("seq") if position else None
    if position is not None and (not isinstance(after, int) or isinstance(after, bool)):
        raise bad_request("cursor: the cursor is not one this API returned", kind="invalid-cursor")
    rows = await queries.audit(res.pool, model=model, version=version, action=action, since=start, until=end,
                               after_seq=after, limit=limit + 1, descending=order == "desc")
    more, rows = len(rows) > limit, rows[:limit]
    return {"items": _in_scope(_reader, rows),
            "next_cursor": cursor.encode({"seq": rows[-1]["seq"]}, res.cursor_key, scope) if more else None}


# ---------------------------------------------------------------------------- writes


@contextlib.asynccontextmanager
async def _publishing(what: str) -> Any:
    """Kafka or S3 failing is a 503 the caller may retry, not a server error."""
    try:
        yield
    except ValidationError as exc:
        raise from_validation_errors(list(exc.errors()), where="request") from None
    except Problem:
        raise
    except Exception as exc:
        module = type(exc).__module__
        if isinstance(exc, (OSError, asyncio.TimeoutError)) or module.startswith(
                ("aiokafka", "botocore", "aiobotocore", "boto3", "s3transfer")):
            log.warning("could not %s: %s: %s", what, type(exc).__name__, exc)
            raise Problem(503, f"could not {what} ({type(exc).__name__}); nothing was published, try again",
                          kind="unavailable", headers={"Retry-After": "5"}) from None
        raise

_JSON_FIELDS = ("metrics", "params", "tags", "dataset", "signature")
_TEXT_FIELDS = ("version", "format", "description", "run_id")
REGISTER_BODY = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {
            "type": "object", "required": ["artifact"],
            "properties": {
                "artifact": {"type": "array", "minItems": 1,
                             "items": {"type": "string", "format": "binary"},
                             "description": "the model file (streamed); or, as several parts, every file of a "
                                            "model directory, each part's filename its path in the directory "
                                            "(`MLmodel`, `data/model.pkl`): registered as a directory artifact"},
                "version": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION,
                            "description": "default: the registry assigns the next"},
                "format": {"type": "string", "pattern": _FORMAT.pattern,
                           "description": "pickle, onnx, ... (default: from the file name)"},
                "description": {"type": "string", "maxLength": 10000},
                "run_id": {"type": "string", "minLength": 1, "maxLength": 256},
                **{field: {"type": "string", "description": f"a JSON object: the version's {field}"}
                   for field in _JSON_FIELDS},
            },
            "additionalProperties": False,
        },
        "encoding": {"artifact": {"contentType": "application/octet-stream"}},
    }},
}


def _form_value(form: Any, field: str) -> Any:
    values = form.getlist(field)
    if len(values) > 1:
        raise bad_request(f"{field}: give it once")
    if not values:
        return None
    value = values[0]
    if isinstance(value, UploadFile):
        raise bad_request(f"{field}: expected a text field, got a file")
    return value


def _registration(name: str, form: Any, actor: str) -> dict[str, Any]:
    """The registration's metadata, checked against the event contract before any upload."""
    unknown = sorted(set(form.keys()) - {"artifact", *_JSON_FIELDS, *_TEXT_FIELDS})
    if unknown:
        raise bad_request(f"unknown form fields: {', '.join(f[:40] for f in unknown[:5])}")
    fields: dict[str, Any] = {}
    for field in _JSON_FIELDS:
        text = _form_value(form, field)
        if text in (None, ""):
            continue
        try:
            fields[field] = json.loads(text)
        except ValueError:
            raise bad_request(f"{field}: not valid JSON") from None
        if not isinstance(fields[field], dict):
            raise bad_request(f"{field}: expected a JSON object")
    version = _form_value(form, "version")
    if version not in (None, ""):
        if not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
            raise bad_request(f"version: expected a whole number from 1 to {MAX_VERSION}")
        fields["version"] = int(version)
    for field in ("format", "description", "run_id"):
        value = _form_value(form, field)
        if value not in (None, ""):
            fields[field] = value
    if "format" in fields and not _FORMAT.match(fields["format"]):
        raise bad_request("format: lower-case letters, digits and . _ + - (at most 32)")
    from .schemas import _check_text

    try:
        _check_text(fields, "form")
        placeholder = ArtifactSpec(uri="s3://placeholder/key", sha256="0" * 64, size_bytes=0)
        ModelRegisteredData(name=name, artifact=placeholder, registered_by=actor,
                            **{k: v for k, v in fields.items() if k != "format"})
    except ValidationError as exc:
        raise from_validation_errors(list(exc.errors()), where="form") from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return fields


def _safe_filename(filename: str | None) -> str:
    base = _FILENAME.sub("_", FilePath(filename or "").name).strip("._")[:100]
    return base or "artifact"


UPLOAD_OVERHEAD = 1024 * 1024  # multipart framing and metadata fields around the artifact


async def _spool(upload: UploadFile, target: FilePath) -> tuple[str, int]:
    """Copy the upload to a file in bounded chunks, hashing as it goes."""
    hasher, size = hashlib.sha256(), 0
    with open(target, "wb") as handle:
        while chunk := await upload.read(UPLOAD_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            await asyncio.to_thread(handle.write, chunk)
    return hasher.hexdigest(), size


@router.post("/models/{name}/versions", status_code=202, response_model=Accepted, responses=WRITE_ERRORS,
             tags=["writes"], openapi_extra={"requestBody": REGISTER_BODY},
             summary="Register a version: upload the artifact (multipart) and publish model.registered")
async def register(name: NameParam, request: Request, res: Resources,
                   identity: Identity = Depends(requires(auth.PUBLISH))) -> dict[str, Any]:
    # The policy's size limit holds before anything is spooled: the body's declared length.
    limit = res.policy.rule_for(name).validation.max_size_bytes
    declared = request.headers.get("content-length")
    if limit is not None:
        if declared is None or not declared.isdigit():
            raise Problem(411, "uploads need a Content-Length header (the artifact's size is checked first)",
                          kind="length-required")
        if int(declared) > limit + UPLOAD_OVERHEAD:
            raise Problem(413, f"the upload is {int(declared)} bytes; {name}'s policy allows artifacts of "
                               f"at most {limit}", kind="too-large")
    # Parsed here, after the token is checked: an unauthorised upload is never spooled.
    max_files = res.policy.rule_for(name).validation.max_files
    async with request.form(max_files=max_files, max_fields=len(_JSON_FIELDS) + len(_TEXT_FIELDS),
                            max_part_size=1024 * 1024) as form:
        parts = form.getlist("artifact")
        uploads = [u for u in parts if isinstance(u, UploadFile)]
        if not parts or len(uploads) != len(parts):
            raise bad_request("artifact: a file part named 'artifact' is required (multipart/form-data)")
        fields = _registration(name, form, identity.name)
        workdir = FilePath(tempfile.mkdtemp(prefix="modelreg-upload-"))
        try:
            if len(uploads) == 1:
                path = workdir / _safe_filename(uploads[0].filename)
                sha256, size = await _spool(uploads[0], path)
                described: dict[str, Any] = {"filename": path.name, "sha256": sha256, "size_bytes": size}
            else:
                path = workdir / "artifact"
                described = await _spool_directory(uploads, path)
            async with _publishing("upload the artifact and publish model.registered"):
                event_id = await res.registry.register(name, path, registered_by=identity.name, **fields)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
    return {"event_id": event_id, "topic": "model.registered", "name": name, "version": fields.get("version"),
            "actor": identity.name, "artifact": described}


async def _spool_directory(uploads: list[Any], root: FilePath) -> dict[str, Any]:
    """Several parts: a model directory, each part's filename its relative path (checked as
    ingest checks a directory's paths). Spooled under `root`; described by its manifest."""
    entries = []
    for upload in uploads:
        relative = upload.filename or ""
        problem = path_problem(relative)
        if problem:
            raise bad_request(f"artifact: a directory part's filename must be a safe relative path: {problem}")
        target = root / relative
        if target.exists() or any(parent.is_file() for parent in target.parents):
            raise bad_request(f"artifact: {relative!r} is given twice, or under a file of the same name")
        target.parent.mkdir(parents=True, exist_ok=True)
        sha256, size = await _spool(upload, target)
        entries.append(FileEntry(relative, size, sha256))
    return {"files": len(entries), "sha256": manifest_digest(entries),
            "size_bytes": sum(e.size_bytes for e in entries)}


@router.post("/models/{name}/versions/{version}/evaluations", status_code=202, response_model=Accepted,
             responses=WRITE_ERRORS, tags=["writes"], summary="Report a QA or monitoring result (metrics.evaluated)")
async def evaluate(name: NameParam, version: VersionParam, body: EvaluationRequest, res: Resources,
                   identity: Identity = Depends(requires(auth.EVALUATE))) -> dict[str, Any]:
    # The evaluator on record is the token's identity, never a name the caller picks.
    if body.evaluator is not None and body.evaluator != identity.name:
        raise Problem(403, f"evaluator is the token's identity ({identity.name!r}), not {body.evaluator[:80]!r}",
                      kind="evaluator-mismatch")
    row = await queries.get_version(res.pool, name, version)
    async with _publishing("publish metrics.evaluated"):
        event_id = await res.registry.evaluate(
            name, version, suite=body.suite, metrics=body.metrics, environment=body.environment,
            passed=body.passed, dataset=body.dataset.model_dump(exclude_none=True) if body.dataset else None,
            evaluator=identity.name, correlationid=row["correlation_id"] if row else None)
    return {"event_id": event_id, "topic": "metrics.evaluated", "name": name, "version": version,
            "actor": identity.name}


@router.post("/models/{name}/versions/{version}/promotion-requests", status_code=202, response_model=Accepted,
             responses=MOVE_ERRORS, tags=["writes"],
             summary="Ask to move a version to a stage (promotion.requested; the token's name is the actor)")
async def request_promotion(name: NameParam, version: VersionParam, body: PromotionRequest, res: Resources,
                            identity: Identity = Depends(requires(auth.APPROVE))) -> dict[str, Any]:
    row = await _version_or_404(res, name, version)
    if body.to_stage in ("staging", "production"):
        _validated_or_409(row, f"it cannot be moved to {body.to_stage} before it does")
    async with _publishing("publish promotion.requested"):
        event_id = await res.registry.request_promotion(name, version, to_stage=body.to_stage, actor=identity.name,
                                                        reason=body.reason)
    return {"event_id": event_id, "topic": "promotion.requested", "name": name, "version": version,
            "actor": identity.name}
