"""api: the HTTP API and web UI, served by uvicorn.

`create_app(settings)` builds the service (`modelreg run api`); `build_asgi(settings)` the ASGI
app alone, for tests. Resources (PostgreSQL pool, the SDK's Kafka producer and S3 uploads, an
S3 client for presigned URLs, the policy) open in the app's lifespan and close in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Histogram

from shared.broker import ensure_topics
from shared.db import create_pool, migrate, pending_migrations, service_role
from shared.health import CHECK_TIMEOUT, HealthServer
from shared.keys import load_keyring
from shared.policy import load_policy
from shared.runtime import until_signalled
from shared.sdk import Registry
from shared.settings import Settings
from shared.signing import service_key
from shared.storage import ObjectStore

from . import auth, dlq, mlflow, problems, routes, ui
from . import webhooks as webhook_routes
from .cache import ChampionCache
from .fastpath import ProductionFastPath
from .resources import ApiResources, Publisher
from .settings import ApiSettings, load_api_settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1024 * 1024  # JSON bodies; artifact uploads stream to disk instead
API_VERSION = "1"

REQUESTS = Counter("modelreg_api_requests_total", "HTTP requests answered, by route template and status",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("modelreg_api_request_seconds", "Time to answer one HTTP request", ["method", "route"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))


def build_asgi(settings: Settings, api_settings: ApiSettings | None = None, *,
               publisher: Publisher | None = None) -> FastAPI:
    """The FastAPI app. `publisher` replaces the SDK's Kafka producer (tests that must not publish)."""
    api_settings = api_settings or load_api_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            policy = load_policy(settings.policy_file)
            load_keyring(settings.keyring_file)  # no keyring: stop here, in one line
            await migrate(settings.dsn)
            pool = await create_pool(settings.dsn, max_size=8, role=service_role(settings.db_role, "api"))
            stack.push_async_callback(pool.close)
            store = await stack.enter_async_context(ObjectStore(settings))
            await store.boto()  # presigned URLs: opened now, not on a request's path
            registry: Publisher
            if publisher is not None:
                registry = publisher
            else:
                await ensure_topics(settings)
                sdk = await stack.enter_async_context(Registry(
                    settings, source="modelreg/api", signing_key=service_key(settings.signing_key_file, "api")))
                # the SDK's request_promotion declares to_stage a Stage; the API hands it the
                # request's text, which the event model (PromotionRequestedData) validates
                registry = cast(Publisher, sdk)
            cache = ChampionCache(settings.dsn)
            await cache.start()
            stack.push_async_callback(cache.stop)
            app.state.resources = ApiResources(settings=settings, api=api_settings, pool=pool, store=store,
                                               registry=registry, policy=policy,
                                               cursor_key=await auth.signing_key(pool), cache=cache,
                                               keyring=load_keyring(settings.keyring_file))
            log.info("api ready: policy %s, reads %s", policy.revision,
                     "open" if api_settings.open_reads else "need a token")
            try:
                yield
            finally:
                app.state.resources = None

    # No Swagger UI: it loads its scripts from a CDN, and nothing here is fetched from elsewhere.
    app = FastAPI(title="modelreg", version=API_VERSION, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json",
                  description="The model registry's read model, its audit log, and its writes as events. "
                              "Errors are RFC 9457 problem details. Reads are open unless "
                              "MODELREG_API_OPEN_READS is false; writes need a bearer token "
                              "(`modelreg token create --role R --name N`).")
    problems.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive", "service": "api"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: resources open, PostgreSQL migrated and S3 reachable."""
        checks = await _ready(getattr(request.app.state, "resources", None))
        ready = all(state == "ok" for state in checks.values())
        return JSONResponse({"status": "ready" if ready else "unready", "service": "api", "checks": checks},
                            status_code=200 if ready else 503)

    app.include_router(routes.router)
    app.include_router(ui.router)
    app.include_router(dlq.router)  # admin: dead letters (API and /dlq page)
    app.include_router(dlq.pages)
    app.include_router(webhook_routes.router)  # admin: /api/v1/webhooks, /api/3.0/mlflow/webhooks
    app.include_router(mlflow.router)  # MLflow's registry API: /api/2.0/mlflow, /ajax-api/2.0/mlflow
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(RequestMetrics)
    app.add_middleware(ProductionFastPath, observe=_observe)  # outermost: the hottest read first
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _observe(route: str, status: int, seconds: float) -> None:
    REQUESTS.labels("GET", route, str(status)).inc()
    REQUEST_SECONDS.labels("GET", route).observe(seconds)


async def _ready(res: ApiResources | None) -> dict[str, str]:
    if res is None:
        return {"resources": "not open"}

    async def postgres() -> None:
        async with res.pool.acquire(timeout=CHECK_TIMEOUT) as conn:
            if pending := await pending_migrations(conn):
                raise RuntimeError(f"migrations not applied: {pending}")

    async def s3() -> None:
        await res.store.head_bucket()

    names, probes = ("postgres", "s3"), (postgres(), s3())
    outcomes = await asyncio.gather(*(asyncio.wait_for(p, CHECK_TIMEOUT) for p in probes), return_exceptions=True)
    return {name: "ok" if not isinstance(outcome, BaseException) else type(outcome).__name__
            for name, outcome in zip(names, outcomes, strict=True)}


class RequestMetrics:
    """Counts and times requests by route template (never the raw path: bounded label values)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - started)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with problem details in place of its 422 validation errors."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = problems.ProblemDocument.model_json_schema(ref_template="#/components/schemas/{model}")
    components["Problem"] = problem
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses.setdefault("400", {"description": "invalid input", "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413), except artifact uploads, which stream to disk."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"].endswith("/versions")):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _send_problem(send, scope, 413, f"request bodies are limited to {self.max_bytes} bytes")
            return
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b"") or b"")
            if received > self.max_bytes:
                raise problems.Problem(413, f"request bodies are limited to {self.max_bytes} bytes")
            return message  # type: ignore[no-any-return]

        await self.app(scope, limited, send)


async def _send_problem(send: Callable[..., Any], scope: dict[str, Any], status: int, detail: str) -> None:
    body = json.dumps(problems.document(problems.Problem(status, detail), scope.get("path", ""))).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", problems.MEDIA_TYPE.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `ApiService` owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class ApiStartError(RuntimeError):
    pass


class ApiService:
    """The API as a service: `start()`, `stop()`, `run_until_signalled()` like every other."""

    name = "api"

    def __init__(self, settings: Settings, api_settings: ApiSettings | None = None, *,
                 publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.api_settings = api_settings or load_api_settings()
        self.app = build_asgi(settings, self.api_settings, publisher=publisher)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.health: HealthServer | None = None
        self.url = ""

    async def start(self) -> None:
        load_policy(self.settings.policy_file)  # a bad policy, or no database, stops it here in one line
        await migrate(self.settings.dsn)
        config = uvicorn.Config(self.app, host=self.api_settings.host, port=self.api_settings.port,
                                http="httptools", ws="none", lifespan="on", log_config=None,
                                access_log=False, server_header=False, timeout_graceful_shutdown=5)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._serve(), name="api-server")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises why it stopped
                raise ApiStartError("the API stopped while starting")
            await asyncio.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        log.info("api listening on %s (UI at /, OpenAPI at /openapi.json)", self.url)
        # /metrics (and the probes again) on the health port, as every service has one
        health_port = self.settings.health_port if self.settings.health_port is not None else 0
        self.health = HealthServer("api", health_port, {"api": self._ready_check}, host=self.settings.health_host)
        try:
            await self.health.start()
        except BaseException:
            await self.stop()
            raise

    async def _ready_check(self) -> None:
        checks = await _ready(getattr(self.app.state, "resources", None))
        if any(state != "ok" for state in checks.values()):
            raise RuntimeError(", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"))

    async def _serve(self) -> None:
        assert self._server is not None
        try:
            await self._server.serve()
        except SystemExit:  # uvicorn exits on a failed startup; the log says why
            raise ApiStartError(f"the API could not start on {self.api_settings.host}:{self.api_settings.port} "
                                "(see the log above)") from None

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, ApiStartError):
                await self._task
        self._task = None

    async def __aenter__(self) -> ApiService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_until_signalled(self) -> None:
        async with self:
            assert self._task is not None
            await until_signalled(self._task)  # or until the server itself stops
            log.info("api stopping")


def create_app(settings: Settings) -> ApiService:
    """`modelreg run api`: also makes the loop uvloop when no loop runs yet (the CLI's case)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return ApiService(settings)
