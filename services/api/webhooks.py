"""Webhooks over HTTP, for admins: `/api/v1/webhooks` (the registry's own shape, RFC 9457
errors) and `/api/3.0/mlflow/webhooks` (MLflow 3's webhook API, MLflow's error shape, for
teams whose tooling already manages MLflow webhooks; endpoints created there are sent
MLflow's payload and `X-MLflow-*` headers).

The API only writes rows: the webhooks service sends everything, tests and replays included
(shared/webhooks/manage.py says why).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from shared.webhooks import manage, store
from shared.webhooks.logic import WebhookInputError

from . import auth
from .auth import Identity
from .problems import bad_request, not_found
from .resources import resources_of
from .routes import Resources, _problem_responses, _time, requires

ADMIN: Any = getattr(auth, "ADMIN", "admin")
ERRORS = _problem_responses(400, 401, 403, 404)
TEST_WAIT_SECONDS = 20.0
DeliveryId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a delivery's id")]

router = APIRouter(tags=["webhooks"])


# ---------------------------------------------------------------------------- /api/v1/webhooks


def _body(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise bad_request("the body is a JSON object")
    return payload


def _strings(payload: dict[str, Any], key: str) -> list[str]:
    value = payload.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{key}: a list of strings")
    return value


def _optional_string(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{key}: a string")
    return value


async def _json(request: Request) -> dict[str, Any]:
    try:
        return _body(await request.json())
    except ValueError:
        raise bad_request("the body is not JSON") from None


async def _endpoint_or_404(pool: Any, endpoint_id: uuid.UUID) -> store.Endpoint:
    endpoint = await store.get_endpoint(pool, endpoint_id)
    if endpoint is None:
        raise not_found(f"no webhook {endpoint_id}")
    return endpoint


@router.post("/api/v1/webhooks", status_code=201, responses=ERRORS,
             summary="A new endpoint; the answer holds its secret, shown this once (admin)")
async def create_webhook(request: Request, res: Resources,
                         admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    """Body: `url`, and optionally `name`, `description`, `events` (topics; default every
    one), `models` (globs), `stages`, `secret` (`whsec_...`; default a new one)."""
    payload = await _json(request)
    url = payload.get("url")
    if not isinstance(url, str):
        raise bad_request("url: required, an http(s) URL")
    try:
        async with res.pool.acquire() as conn:
            endpoint = await manage.create(
                conn, res.settings, url=url, created_by=admin.name, name=_optional_string(payload, "name"),
                description=_optional_string(payload, "description"), topics=_strings(payload, "events"),
                models=_strings(payload, "models"), stages=_strings(payload, "stages"),
                secret=_optional_string(payload, "secret"))
    except WebhookInputError as exc:
        raise bad_request(str(exc), kind="invalid-webhook") from None
    return endpoint.public(with_secret=True)


@router.get("/api/v1/webhooks", responses=ERRORS, summary="Every endpoint (admin)")
async def list_webhooks(res: Resources, _admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    return {"items": [e.public() for e in await store.list_endpoints(res.pool)]}


@router.get("/api/v1/webhooks/deliveries/{delivery_id}", responses=ERRORS,
            summary="One delivery with every attempt (admin)")
async def get_webhook_delivery(res: Resources, delivery_id: DeliveryId,
                               _admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    found = await store.get_delivery(res.pool, delivery_id)
    if found is None:
        raise not_found(f"no delivery {delivery_id}")
    return found


@router.post("/api/v1/webhooks/deliveries/{delivery_id}/redeliver", status_code=202, responses=ERRORS,
             summary="Send one delivery again, with the same webhook-id (admin)")
async def redeliver_one(res: Resources, delivery_id: DeliveryId,
                        admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    if await store.get_delivery(res.pool, delivery_id) is None:
        raise not_found(f"no delivery {delivery_id}")
    ids = await store.redeliver(res.pool, requested_by=admin.name, delivery_id=delivery_id)
    if not ids:
        raise bad_request(f"delivery {delivery_id} is a test: ask for a new test", kind="invalid-webhook")
    return {"queued": ids}


@router.get("/api/v1/webhooks/{endpoint_id}", responses=ERRORS, summary="One endpoint (admin)")
async def get_webhook(res: Resources, endpoint_id: uuid.UUID,
                      _admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    return (await _endpoint_or_404(res.pool, endpoint_id)).public()


@router.patch("/api/v1/webhooks/{endpoint_id}", responses=ERRORS,
              summary="Enable or disable an endpoint, rename or describe it (admin)")
async def update_webhook(request: Request, res: Resources, endpoint_id: uuid.UUID,
                         _admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    payload = await _json(request)
    changes: dict[str, Any] = {}
    if "status" in payload:
        if payload["status"] not in ("active", "disabled"):
            raise bad_request("status: active or disabled")
        changes["status"] = payload["status"]
    for key in ("name", "description"):
        if key in payload:
            changes[key] = _optional_string(payload, key)
    if unknown := sorted(set(payload) - {"status", "name", "description"}):
        raise bad_request(f"cannot change {', '.join(unknown)}: create a new endpoint")
    endpoint = await store.update_endpoint(res.pool, endpoint_id, **changes)
    if endpoint is None:
        raise not_found(f"no webhook {endpoint_id}")
    return endpoint.public()


@router.delete("/api/v1/webhooks/{endpoint_id}", status_code=204, responses=ERRORS,
               summary="Remove an endpoint and its delivery log (admin)")
async def delete_webhook(res: Resources, endpoint_id: uuid.UUID,
                         admin: Identity = Depends(requires(ADMIN))) -> Response:
    if not await store.delete_endpoint(res.pool, endpoint_id, deleted_by=admin.name):
        raise not_found(f"no webhook {endpoint_id}")
    return Response(status_code=204)


@router.post("/api/v1/webhooks/{endpoint_id}/test", responses=ERRORS,
             summary="Send a test message and answer with the attempt (admin)")
async def test_webhook(res: Resources, endpoint_id: uuid.UUID,
                       admin: Identity = Depends(requires(ADMIN))) -> dict[str, Any]:
    endpoint = await _endpoint_or_404(res.pool, endpoint_id)
    async with res.pool.acquire() as conn:
        delivery_id, done = await manage.send_test(conn, endpoint, requested_by=admin.name,
                                                   wait_seconds=TEST_WAIT_SECONDS)
    return done or {"id": delivery_id, "status": "pending",
                    "detail": f"not tried within {TEST_WAIT_SECONDS:g}s: is the webhooks service running?"}


@router.get("/api/v1/webhooks/{endpoint_id}/deliveries", responses=ERRORS,
            summary="An endpoint's delivery log, newest first, with every attempt (admin)")
async def list_webhook_deliveries(
    res: Resources, endpoint_id: uuid.UUID, _admin: Identity = Depends(requires(ADMIN)),
    status: str | None = Query(None, pattern="^(pending|delivered|failed)$"),
    since: str | None = Query(None, max_length=64, description="RFC 3339: recorded at or after"),
    limit: int = Query(50, ge=1, le=store.MAX_LIST),
) -> dict[str, Any]:
    await _endpoint_or_404(res.pool, endpoint_id)
    return {"items": await store.list_deliveries(res.pool, endpoint_id=endpoint_id, status=status,
                                                 since=_time(since, "since"), limit=limit, with_attempts=True)}


@router.post("/api/v1/webhooks/{endpoint_id}/redeliver", status_code=202, responses=ERRORS,
             summary="Send again every event delivery since a time, in order (admin)")
async def redeliver_since(res: Resources, endpoint_id: uuid.UUID, admin: Identity = Depends(requires(ADMIN)),
                          since: str = Query(..., max_length=64, description="RFC 3339")) -> dict[str, Any]:
    await _endpoint_or_404(res.pool, endpoint_id)
    ids = await store.redeliver(res.pool, requested_by=admin.name, endpoint_id=endpoint_id,
                                since=_time(since, "since"))
    return {"queued": ids}


# ---------------------------------------------------------------------------- MLflow's shape

MLFLOW = "/api/3.0/mlflow/webhooks"


class MlflowError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        return JSONResponse({"error_code": self.code, "message": self.message}, status_code=self.status)


def _token(header: str | None) -> str | None:
    """MLflow's client sends a token as `Bearer` (MLFLOW_TRACKING_TOKEN) or as the password of
    basic auth (MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            _user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return password or None
    return None


async def _mlflow_admin(request: Request) -> Identity:
    token = _token(request.headers.get("authorization"))
    if token is None:
        raise MlflowError(401, "UNAUTHENTICATED", "webhooks need an admin token (MLFLOW_TRACKING_TOKEN)")
    identity = await auth.identify(resources_of(request).pool, token)
    if identity is None:
        raise MlflowError(401, "UNAUTHENTICATED", "unknown, revoked or expired token")
    if not auth.allows(identity.role, ADMIN):
        raise MlflowError(403, "PERMISSION_DENIED", f"token {identity.name!r} has role {identity.role}; "
                                                   "webhooks need admin")
    return identity


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def _mlflow_webhook(endpoint: store.Endpoint) -> dict[str, Any]:
    return {"webhook_id": str(endpoint.id), "name": endpoint.name, "description": endpoint.description or "",
            "url": endpoint.url,
            "events": [{"entity": e.split(".")[0].upper(), "action": e.split(".")[1].upper()}
                       for e in endpoint.mlflow_events],
            "status": endpoint.status.upper(), "creation_timestamp": _ms(endpoint.created_at),
            "last_updated_timestamp": _ms(endpoint.updated_at)}


async def _mlflow_body(request: Request) -> dict[str, Any]:
    try:
        payload = await request.json()
    except ValueError:
        raise MlflowError(400, "MALFORMED_REQUEST", "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise MlflowError(400, "MALFORMED_REQUEST", "the body is a JSON object")
    return payload


async def _mlflow_endpoint(request: Request, webhook_id: str) -> store.Endpoint:
    try:
        endpoint_id = uuid.UUID(webhook_id)
    except ValueError:
        endpoint_id = None
    endpoint = await store.get_endpoint(resources_of(request).pool, endpoint_id) if endpoint_id else None
    if endpoint is None or endpoint.format != "mlflow":
        raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"Webhook with ID {webhook_id} not found")
    return endpoint


def _status(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or value.upper() not in ("ACTIVE", "DISABLED"):
        raise MlflowError(400, "INVALID_PARAMETER_VALUE", "status: ACTIVE or DISABLED")
    return value.upper() == "ACTIVE"


def _mlflow_route(handler: Any) -> Any:
    """MLflow errors for everything that goes wrong in `handler`."""
    import functools

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except MlflowError as exc:
            return exc.response()
        except WebhookInputError as exc:
            return MlflowError(400, "INVALID_PARAMETER_VALUE", str(exc)).response()

    return wrapped


@router.post(MLFLOW, include_in_schema=False)
@_mlflow_route
async def mlflow_create(request: Request) -> Any:
    admin = await _mlflow_admin(request)
    payload = await _mlflow_body(request)
    name, url, events = payload.get("name"), payload.get("url"), payload.get("events")
    if not isinstance(name, str) or not name.strip():
        raise MlflowError(400, "INVALID_PARAMETER_VALUE", "Missing value for required parameter 'name'")
    if not isinstance(url, str) or not url:
        raise MlflowError(400, "INVALID_PARAMETER_VALUE", "Missing value for required parameter 'url'")
    if not isinstance(events, list) or not events:
        raise MlflowError(400, "INVALID_PARAMETER_VALUE", "Missing value for required parameter 'events'")
    description, secret = payload.get("description"), payload.get("secret")
    async with resources_of(request).pool.acquire() as conn:
        endpoint = await manage.create(
            conn, resources_of(request).settings, url=url, name=name, created_by=admin.name, fmt="mlflow",
            description=description if isinstance(description, str) else None,
            secret=secret if isinstance(secret, str) and secret else None, mlflow_events=events,
            active=_status(payload.get("status")))
    return {"webhook": _mlflow_webhook(endpoint)}


@router.get(MLFLOW, include_in_schema=False)
@_mlflow_route
async def mlflow_list(request: Request) -> Any:
    await _mlflow_admin(request)
    try:
        limit = int(request.query_params.get("max_results", 100))
    except ValueError:
        limit = 0
    if not 1 <= limit <= store.MAX_LIST:
        raise MlflowError(400, "INVALID_PARAMETER_VALUE", f"max_results: 1 to {store.MAX_LIST}")
    after = None
    if token := request.query_params.get("page_token"):
        try:
            after = uuid.UUID(token)
        except ValueError:
            raise MlflowError(400, "INVALID_PARAMETER_VALUE", "invalid page_token") from None
    found = await store.list_endpoints(resources_of(request).pool, fmt="mlflow", limit=limit + 1, after=after)
    page = found[:limit]
    answer: dict[str, Any] = {"webhooks": [_mlflow_webhook(e) for e in page]}
    if len(found) > limit:
        answer["next_page_token"] = str(page[-1].id)
    return answer


@router.get(MLFLOW + "/{webhook_id}", include_in_schema=False)
@_mlflow_route
async def mlflow_get(request: Request, webhook_id: str) -> Any:
    await _mlflow_admin(request)
    return {"webhook": _mlflow_webhook(await _mlflow_endpoint(request, webhook_id))}


@router.patch(MLFLOW + "/{webhook_id}", include_in_schema=False)
@_mlflow_route
async def mlflow_update(request: Request, webhook_id: str) -> Any:
    await _mlflow_admin(request)
    endpoint = await _mlflow_endpoint(request, webhook_id)
    payload = await _mlflow_body(request)
    res = resources_of(request)
    changes: dict[str, Any] = {}
    for key in ("name", "description"):
        if isinstance(payload.get(key), str):
            changes[key] = payload[key]
    if isinstance(payload.get("url"), str) and payload["url"] != endpoint.url:
        changes["url"] = await manage.check_url(payload["url"], res.settings)
    if isinstance(payload.get("secret"), str) and payload["secret"]:
        from shared.webhooks.logic import check_secret

        changes["secret"] = check_secret(payload["secret"], "mlflow")
    if isinstance(payload.get("events"), list) and payload["events"]:
        from shared.webhooks.logic import mlflow_event_name, mlflow_topics

        names = tuple(dict.fromkeys(mlflow_event_name(e) for e in payload["events"]))
        changes["mlflow_events"], changes["topics"] = list(names), list(mlflow_topics(names))
    if payload.get("status") is not None:
        changes["status"] = "active" if _status(payload["status"]) else "disabled"
    updated = await store.update_endpoint(res.pool, endpoint.id, **changes)
    if updated is None:
        raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"Webhook with ID {webhook_id} not found")
    return {"webhook": _mlflow_webhook(updated)}


@router.delete(MLFLOW + "/{webhook_id}", include_in_schema=False)
@_mlflow_route
async def mlflow_delete(request: Request, webhook_id: str) -> Any:
    admin = await _mlflow_admin(request)
    endpoint = await _mlflow_endpoint(request, webhook_id)
    await store.delete_endpoint(resources_of(request).pool, endpoint.id, deleted_by=admin.name)
    return {}


@router.post(MLFLOW + "/{webhook_id}/test", include_in_schema=False)
@_mlflow_route
async def mlflow_test(request: Request, webhook_id: str) -> Any:
    admin = await _mlflow_admin(request)
    endpoint = await _mlflow_endpoint(request, webhook_id)
    async with resources_of(request).pool.acquire() as conn:
        _delivery_id, done = await manage.send_test(conn, endpoint, requested_by=admin.name,
                                                    wait_seconds=TEST_WAIT_SECONDS)
    if done is None:
        return {"result": {"success": False, "error_message": "the webhooks service did not send it in time"}}
    attempt = done["attempt_log"][-1]
    result: dict[str, Any] = {"success": done["status"] == "delivered"}
    if attempt["status_code"] is not None:
        result["response_status"] = attempt["status_code"]
    if attempt["response_excerpt"]:
        result["response_body"] = attempt["response_excerpt"]
    if attempt["error"] and not result["success"]:
        result["error_message"] = attempt["error"]
    return {"result": result}

