"""The MLflow Model Registry REST API (`/api/2.0/mlflow/...` and `/ajax-api/2.0/mlflow/...`).

Handlers parse MLflow's request (query parameters for GET, a JSON body otherwise), check the
token, and either read the registry view and the labels (`store`) or publish one event through
the API's signing publisher: `model.registered` for a new version, `promotion.requested` for
the champion alias and stage transitions. The policy decides promotions; nothing here does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from shared.local_artifacts import LocalSourceRefused, local_artifact_path, roots_text

from .. import auth
from ..auth import Identity
from ..resources import ApiResources, resources_of
from ..routes import _publishing
from . import filters, mapping, parsing, store, tracking
from .credentials import caller, may_read, must
from .errors import MlflowError, MlflowRoute, invalid, not_found

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
MAX_MODELS_PAGE = 1000
MAX_VERSIONS_PAGE = 10_000

router = APIRouter(route_class=MlflowRoute, include_in_schema=False)
Handler = Callable[[Request], Any]


def _route(path: str, *methods: str) -> Callable[[Handler], Handler]:
    """Serve `handler` at `path` under both prefixes."""
    def register(handler: Handler) -> Handler:
        for prefix in PREFIXES:
            router.add_api_route(prefix + path, handler, methods=list(methods))
        return handler
    return register


def _resources(request: Request) -> ApiResources:
    return resources_of(request)


# ---------------------------------------------------------------------------- shaping


async def _version_aliases(res: ApiResources, name: str) -> dict[int, list[str]]:
    by_version: dict[int, list[str]] = {}
    for row in await store.aliases(res.pool, name):
        by_version.setdefault(row["version"], []).append(row["alias"])
    champion = await store.champion(res.pool, name)
    if champion is not None:
        by_version.setdefault(champion, []).append(res.api.mlflow_champion_alias)
    return by_version


def _version_json(row: dict[str, Any], aliases: dict[int, list[str]]) -> dict[str, Any]:
    registration = mapping.registration_status(None if row.get("pending") else row, row.get("event_id"))
    return mapping.model_version(row, aliases=aliases.get(row["version"], ()), registration=registration)


async def _model_json(res: ApiResources, model: dict[str, Any]) -> dict[str, Any]:
    name = model["name"]
    rows = await store.versions(res.pool, name)
    aliases = await _version_aliases(res, name)
    latest = [_version_json(dict(r), aliases) for r in mapping.latest_per_stage(rows)]
    alias_map = {alias: version for version, names in aliases.items() for alias in names}
    return mapping.registered_model(model, latest=latest, tags=model.get("tags") or {}, aliases=alias_map)


async def _model_or_404(res: ApiResources, name: str) -> dict[str, Any]:
    model = await store.model(res.pool, name)
    if model is None:
        raise not_found(f"Registered Model with name={name} not found")
    return model


async def _version_or_404(res: ApiResources, name: str, version: int) -> dict[str, Any]:
    row = await store.version(res.pool, name, version)
    if row is None:
        raise not_found(f"Model Version (name={name}, version={version}) not found")
    return row


def _page(items: list[dict[str, Any]], offset: int, limit: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One page of a sorted search result, and the token of the next when there is one."""
    more = offset + limit < len(items)
    return items[offset:offset + limit], ({"next_page_token": parsing.page_token(offset + limit)} if more else {})


async def _identity(request: Request) -> Identity | None:
    return await caller(request)


# ---------------------------------------------------------------------------- registered models


@_route("/registered-models/create", "POST")
async def create_registered_model(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    identity = must(await _identity(request), name, auth.PUBLISH)
    description = parsing.text(params, "description", required=False)
    tags = parsing.tags(params)
    if await store.model(res.pool, name) is not None or not await store.create_model(
            res.pool, name, description, tags, identity.name):
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists.")
    return {"registered_model": await _model_json(res, await _model_or_404(res, name))}


@_route("/registered-models/get", "GET")
async def get_registered_model(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    may_read(request, await _identity(request), name)
    return {"registered_model": await _model_json(res, await _model_or_404(res, name))}


@_route("/registered-models/search", "GET", "POST")
async def search_registered_models(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    identity = await _identity(request)
    may_read(request, identity)
    clauses = parsing.search_filter(params.get("filter"), filters.MODEL_ATTRIBUTES)
    limit = parsing.max_results(params, 100, MAX_MODELS_PAGE)
    orders = parsing.order_by(params.get("order_by"), ("name", "creation_timestamp", "last_updated_timestamp"),
                     [filters.Order("name", False)])
    offset = parsing.offset(params.get("page_token"))
    candidates = [m for m in await store.models(res.pool) if identity is None or identity.may_touch(m["name"])]
    found = [m for m in candidates if filters.matches(clauses, {"name": m["name"], "tags": m["tags"]})]
    keyed = [{**m, "creation_timestamp": mapping.millis(m["created_at"]),
              "last_updated_timestamp": mapping.millis(m["updated_at"])} for m in found]
    page, answer = _page(filters.sort(keyed, orders), offset, limit)
    return {"registered_models": [await _model_json(res, m) for m in page], **answer}


@_route("/registered-models/update", "PATCH")
async def update_registered_model(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    identity = must(await _identity(request), name, auth.PUBLISH, auth.APPROVE)
    await _model_or_404(res, name)
    await store.describe_model(res.pool, name, parsing.text(params, "description", required=False) or "", identity.name)
    return {"registered_model": await _model_json(res, await _model_or_404(res, name))}


@_route("/registered-models/rename", "POST")
async def rename_registered_model(request: Request) -> dict[str, Any]:
    raise invalid("modelreg does not rename models: a model's name is how its audit log, events and policy rule "
                  "refer to it; register under the new name instead")


@_route("/registered-models/delete", "DELETE")
async def delete_registered_model(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    identity = must(await _identity(request), name, auth.PUBLISH)
    await _model_or_404(res, name)
    if await store.versions(res.pool, name):
        raise invalid(f"{name} has versions, and modelreg keeps every version it registered (its audit log names "
                      "them); archive them instead (the retention policy, or transition-stage to Archived)")
    await store.delete_model(res.pool, name, identity.name)
    return {}


@_route("/registered-models/set-tag", "POST")
async def set_registered_model_tag(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    identity = must(await _identity(request), name, auth.PUBLISH, auth.APPROVE)
    key, value = parsing.text(params, "key", limit=250), parsing.text(params, "value", required=False, limit=5000) or ""
    await _model_or_404(res, name)
    await store.set_model_tag(res.pool, name, key, value, identity.name)
    return {}


@_route("/registered-models/delete-tag", "DELETE")
async def delete_registered_model_tag(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    identity = must(await _identity(request), name, auth.PUBLISH, auth.APPROVE)
    key = parsing.text(params, "key", limit=250)
    await _model_or_404(res, name)
    if not await store.delete_model_tag(res.pool, name, key, identity.name):
        raise not_found(f"Registered model tag with name={name}, key={key} not found")
    return {}


@_route("/registered-models/get-latest-versions", "GET", "POST")
async def get_latest_versions(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    may_read(request, await _identity(request), name)
    await _model_or_404(res, name)
    stages = params.get("stages") or None
    try:
        latest = mapping.latest_per_stage(await store.versions(res.pool, name), stages)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    aliases = await _version_aliases(res, name)
    return {"model_versions": [_version_json(dict(r), aliases) for r in latest]}


# ---------------------------------------------------------------------------- aliases


@_route("/registered-models/alias", "POST")
async def set_registered_model_alias(request: Request) -> JSONResponse:
    res, params = _resources(request), await parsing.params(request)
    name, alias, version = parsing.model_name(params), parsing.alias(params), parsing.version(params)
    identity = await _identity(request)
    if alias == res.api.mlflow_champion_alias:
        identity = must(identity, name, auth.APPROVE)
        row = await _version_or_404(res, name, version)
        requested = await _request_stage(res, identity, row, "production",
                                         f"MLflow: set alias {alias!r} to version {version}")
        return JSONResponse({"modelreg": requested})
    identity = must(identity, name, auth.PUBLISH, auth.APPROVE)
    await _version_or_404(res, name, version)
    await store.set_alias(res.pool, name, alias, version, identity.name)
    return JSONResponse({})


@_route("/registered-models/alias", "DELETE")
async def delete_registered_model_alias(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name, alias = parsing.model_name(params), parsing.alias(params)
    identity = must(await _identity(request), name, auth.PUBLISH, auth.APPROVE)
    if alias == res.api.mlflow_champion_alias:
        raise invalid(f"{alias!r} is the production stage, which the promotion policy sets; to take a version out of "
                      "production, transition it to another stage (an approver's promotion request)")
    if not await store.delete_alias(res.pool, name, alias, identity.name):
        raise not_found(f"Registered model alias {alias} not found on model {name}")
    return {}


@_route("/registered-models/alias", "GET")
async def get_model_version_by_alias(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name, alias = parsing.model_name(params), parsing.alias(params)
    may_read(request, await _identity(request), name)
    await _model_or_404(res, name)
    if alias == res.api.mlflow_champion_alias:
        version = await store.champion(res.pool, name)
        if version is None:
            raise not_found(f"Registered model alias {alias} not found: no version of {name} is in production")
    else:
        labels = {row["alias"]: row["version"] for row in await store.aliases(res.pool, name)}
        if alias not in labels:
            raise not_found(f"Registered model alias {alias} not found.")
        version = labels[alias]
    row = await _version_or_404(res, name, version)
    return {"model_version": _version_json(row, await _version_aliases(res, name))}


# ---------------------------------------------------------------------------- model versions


def _source_uri(res: ApiResources, source: str) -> str:
    """The artifact URI a version's `source` is registered from, or MLflow's INVALID_PARAMETER_VALUE:
    an s3:// object or prefix in a bucket the registry may read, or a file or directory model
    under MODELREG_ARTIFACT_ROOTS (a `file://` URI, or the plain absolute path MLflow's local
    artifact stores give), which ingest reads in place; the rule is ingest's own
    (shared.local_artifacts: real paths, no '..', no symlink out of the roots)."""
    if source.startswith("s3://"):
        bucket = source[5:].split("/", 1)[0]
        if bucket not in res.settings.allowed_bucket_names:
            raise invalid(f"source {source[:200]!r}: bucket {bucket!r} is not one the registry may read "
                          "(MODELREG_ALLOWED_BUCKETS)")
        return source
    if source.startswith("/"):
        source = "file://" + quote(source)
    if source.startswith("file://"):
        roots = res.settings.artifact_root_paths
        try:
            local_artifact_path(source, roots)
        except LocalSourceRefused as exc:
            raise invalid(f"source {source[:200]!r}: {exc.message}; the registry reads local models only from "
                          f"under {roots_text(roots)} (MODELREG_ARTIFACT_ROOTS)") from None
        return source
    if source.startswith("mlflow-artifacts:/"):
        # A tracking server that proxies artifacts hands out its own scheme; the files are in the
        # store behind it, which is what the registry can be allowed to read.
        raise invalid(f"source {source[:200]!r}: artifacts proxied by an MLflow tracking server (mlflow-artifacts:/), "
                      "which modelreg does not read; run the tracking server with --no-serve-artifacts and "
                      "--default-artifact-root set to an s3:// location in a bucket the registry may read "
                      "(MODELREG_ALLOWED_BUCKETS) or a directory under "
                      f"{roots_text(res.settings.artifact_root_paths)} (MODELREG_ARTIFACT_ROOTS)")
    raise invalid(f"source {source[:200]!r}: modelreg registers artifacts from s3:// URIs, or file:// URIs and "
                  "absolute paths under its artifact roots (copy the model to the registry's bucket, or one it "
                  "may read, first)")


async def _registered_source(res: ApiResources, source: str) -> tuple[str, str | None, str | None]:
    """The artifact URI to register for `source`, the MLflow logged model's id when it is one,
    and the run the tracking server says logged it: `models:/m-ID` (MLflow 3's register_model("runs:/...") and
    log_model(registered_model_name=...)) and `runs:/RUN/PATH` are located by the team's
    tracking server (MODELREG_API_MLFLOW_TRACKING_URI), and what it answers must pass the same
    rules as a direct source."""
    reference = tracking.tracking_reference(source)
    if reference is None:
        return _source_uri(res, source), None, None
    if res.api.mlflow_tracking_uri is None:
        raise invalid(f"source {source[:200]!r}: an MLflow {reference.kind} kept by your "
                      "tracking server, which this registry is not configured to ask: set "
                      "MODELREG_API_MLFLOW_TRACKING_URI to that server, or register its files instead: "
                      "mlflow.register_model(MlflowClient().get_logged_model(MODEL_ID).artifact_location, NAME), "
                      "an s3:// location in a bucket the registry may read (MODELREG_ALLOWED_BUCKETS) or a local "
                      f"one under {roots_text(res.settings.artifact_root_paths)} (MODELREG_ARTIFACT_ROOTS)")
    located = await tracking.resolve(res.api.mlflow_tracking_uri, res.api.mlflow_tracking_token, reference)
    try:
        uri = _source_uri(res, located.artifact_uri)
    except MlflowError as exc:
        raise invalid(f"{source[:200]!r} is {reference.described}, whose artifacts the tracking server keeps at "
                      f"{exc.message.removeprefix('source ')}") from None
    return uri, reference.model_id, located.run_id


@_route("/model-versions/create", "POST")
async def create_model_version(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name = parsing.model_name(params)
    identity = must(await _identity(request), name, auth.PUBLISH)
    source = str(parsing.text(params, "source", limit=2048))
    run_id = parsing.text(params, "run_id", required=False, limit=256) or None
    description = parsing.text(params, "description", required=False) or None
    tags = parsing.tags(params)
    uri, model_id, source_run = await _registered_source(res, source)
    run_id = run_id or source_run  # log_model(registered_model_name=...) sends none
    version = await store.reserve_version(res.pool, name, source, run_id, identity.name)
    try:
        async with _publishing("publish model.registered"):
            try:
                event_id = await res.registry.register(name, uri, version=version, tags=tags,
                                                       description=description, run_id=run_id,
                                                       registered_by=identity.name)
            except (FileNotFoundError, PermissionError) as exc:  # OSErrors, which _publishing would call an outage
                raise invalid(f"source: {exc}") from None
            except ValidationError:
                raise
            except ValueError as exc:
                raise invalid(f"the registration is invalid: {exc}") from None
    except BaseException:
        await store.release(res.pool, name, version)
        raise
    await store.registered(res.pool, name, version, event_id)
    if model_id is not None:  # a label, like MLflow's ModelVersion.model_id
        await store.set_version_tag(res.pool, name, version, mapping.MODEL_ID_TAG, model_id, identity.name)
    row = await _version_or_404(res, name, version)
    return {"model_version": _version_json(row, await _version_aliases(res, name))}


@_route("/model-versions/get", "GET")
async def get_model_version(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name, version = parsing.model_name(params), parsing.version(params)
    may_read(request, await _identity(request), name)
    row = await _version_or_404(res, name, version)
    return {"model_version": _version_json(row, await _version_aliases(res, name))}


@_route("/model-versions/search", "GET", "POST")
async def search_model_versions(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    identity = await _identity(request)
    may_read(request, identity)
    clauses = parsing.search_filter(params.get("filter"), filters.VERSION_ATTRIBUTES)
    limit = parsing.max_results(params, MAX_VERSIONS_PAGE, MAX_VERSIONS_PAGE)
    orders = parsing.order_by(params.get("order_by"), ("name", "version_number", "creation_timestamp",
                                               "last_updated_timestamp"),
                     [filters.Order("name", False), filters.Order("version_number", True)])
    offset = parsing.offset(params.get("page_token"))
    # one model named exactly: read only its versions
    only = next((c.value for c in clauses if c.kind == "attribute" and c.key == "name" and c.op == "="), None)
    rows = [r for r in await store.versions(res.pool, only) if identity is None or identity.may_touch(r["name"])]
    keyed = []
    for row in rows:
        item = {**row, "version_number": row["version"], "source_path": row.get("source_uri"),
                "tags": {**(row.get("tags") or {}), **(row.get("mlflow_tags") or {})},
                "creation_timestamp": mapping.millis(row.get("created_at")),
                "last_updated_timestamp": mapping.millis(row.get("updated_at"))}
        if filters.matches(clauses, item):
            keyed.append(item)
    page, answer = _page(filters.sort(keyed, orders), offset, limit)
    aliases: dict[str, dict[int, list[str]]] = {}
    out = []
    for item in page:
        if item["name"] not in aliases:
            aliases[item["name"]] = await _version_aliases(res, item["name"])
        out.append(_version_json({**item, "mlflow_tags": None}, aliases[item["name"]]))  # tags already merged
    return {"model_versions": out, **answer}


@_route("/model-versions/update", "PATCH")
async def update_model_version(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name, version = parsing.model_name(params), parsing.version(params)
    identity = must(await _identity(request), name, auth.PUBLISH, auth.APPROVE)
    await _version_or_404(res, name, version)
    await store.describe_version(res.pool, name, version, parsing.text(params, "description", required=False) or "",
                                 identity.name)
    row = await _version_or_404(res, name, version)
    return {"model_version": _version_json(row, await _version_aliases(res, name))}


@_route("/model-versions/set-tag", "POST")
async def set_model_version_tag(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name, version = parsing.model_name(params), parsing.version(params)
    identity = must(await _identity(request), name, auth.PUBLISH, auth.APPROVE)
    key, value = parsing.text(params, "key", limit=250), parsing.text(params, "value", required=False, limit=5000) or ""
    await _version_or_404(res, name, version)
    await store.set_version_tag(res.pool, name, version, key, value, identity.name)
    return {}


@_route("/model-versions/delete-tag", "DELETE")
async def delete_model_version_tag(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name, version = parsing.model_name(params), parsing.version(params)
    identity = must(await _identity(request), name, auth.PUBLISH, auth.APPROVE)
    key = parsing.text(params, "key", limit=250)
    row = await _version_or_404(res, name, version)
    if not await store.delete_version_tag(res.pool, name, version, key, identity.name):
        if key in (row.get("tags") or {}):
            raise invalid(f"tag {key!r} was registered with {name} v{version} (it is part of its signed "
                          "model.registered event) and cannot be deleted")
        raise not_found(f"Model version tag with name={name}, version={version}, key={key} not found")
    return {}


@_route("/model-versions/transition-stage", "POST")
async def transition_model_version_stage(request: Request) -> dict[str, Any]:
    res, params = _resources(request), await parsing.params(request)
    name, version = parsing.model_name(params), parsing.version(params)
    identity = must(await _identity(request), name, auth.APPROVE)
    try:
        stage = mapping.stage_from_mlflow(str(parsing.text(params, "stage", limit=32)))
    except ValueError as exc:
        raise invalid(str(exc)) from None
    row = await _version_or_404(res, name, version)
    requested = await _request_stage(res, identity, row, stage,
                                     f"MLflow: transition-stage to {mapping.STAGE_TO_MLFLOW[stage]}")
    return {"model_version": _version_json(row, await _version_aliases(res, name)), "modelreg": requested}


@_route("/model-versions/delete", "DELETE")
async def delete_model_version(request: Request) -> dict[str, Any]:
    raise invalid("modelreg keeps every version it registered (its audit log names them); transition it to "
                  "Archived instead")


async def _request_stage(res: ApiResources, identity: Identity, row: dict[str, Any], stage: str,
                         reason: str) -> dict[str, Any]:
    """Publish promotion.requested; the policy decides, and the answer says so."""
    if row.get("pending") or (stage in ("staging", "production") and row.get("status") != "validated"):
        raise invalid(f"{row['name']} v{row['version']} has not passed validation (status "
                      f"{row.get('status') or 'registering'}): it cannot be moved to {stage} before it does")
    async with _publishing("publish promotion.requested"):
        event_id = await res.registry.request_promotion(row["name"], row["version"], to_stage=stage,
                                                        actor=identity.name, reason=reason)
    return {"promotion_requested": {"event_id": str(event_id), "name": row["name"], "version": row["version"],
                                    "to_stage": stage, "actor": identity.name},
            "decided_by": "policy",
            "note": f"a request, not a change: the promotion policy decides whether {row['name']} "
                    f"v{row['version']} moves to {stage} (approvals, gates); the stage and the "
                    f"{res.api.mlflow_champion_alias!r} alias follow its decision"}


# ---------------------------------------------------------------------------- other endpoints


@_route("/model-versions/get-download-uri", "GET")
async def get_model_version_download_uri(request: Request) -> dict[str, Any]:
    from .artifacts import download_uri

    res, params = _resources(request), await parsing.params(request)
    name, version = parsing.model_name(params), parsing.version(params)
    may_read(request, await _identity(request), name)
    row = await _version_or_404(res, name, version)
    if row.get("pending") or row.get("status") != "validated":
        raise invalid(f"{name} v{version} has not passed validation (status {row.get('status') or 'registering'}): "
                      "only validated artifacts are handed out")
    return {"artifact_uri": download_uri(request, name, version)}


@_route("/{anything:path}", "GET", "POST", "PATCH", "DELETE", "PUT")
async def endpoint_not_found(request: Request) -> dict[str, Any]:
    raise MlflowError("ENDPOINT_NOT_FOUND", f"modelreg does not serve {request.method} {request.url.path} "
                                            "(it serves MLflow's model registry API)")
