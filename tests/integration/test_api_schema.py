"""Schemathesis against /openapi.json: generated requests for every operation (a bounded
number each) find no server error and no response outside the published schema.

The API runs on a real uvicorn server in a thread of its own (schemathesis calls it
synchronously), over this run's database with a seeded model; its writes go to a recording
publisher instead of Kafka, so the fuzzing publishes nothing."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.api import auth
from services.api.app import ApiService, build_asgi
from services.api.settings import ApiSettings
from shared.db import create_pool, migrate
from shared.settings import Settings
from tests.e2e.seed import three_versions_and_a_rollback, write

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
MODEL = f"life-schema-{uuid.uuid4().hex[:6]}"


class Recorder:
    """Stands in for the SDK's producer: counts what would have been published."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    async def register(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        self.calls.append(("register", args, kwargs))
        return uuid.uuid4()

    async def evaluate(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        self.calls.append(("evaluate", args, kwargs))
        return uuid.uuid4()

    async def request_promotion(self, *args: Any, **kwargs: Any) -> uuid.UUID:
        self.calls.append(("request_promotion", args, kwargs))
        return uuid.uuid4()


class ThreadedApi:
    """The API on its own event loop in a thread, so synchronous clients can call it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.recorder = Recorder()
        self.url = ""
        self.admin = ""
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api-under-test", daemon=True)

    def __enter__(self) -> ThreadedApi:
        self._thread.start()
        if not self._ready.wait(timeout=90):
            raise RuntimeError("the API did not start within 90 s")
        if self._failed is not None:
            raise RuntimeError(f"the API did not start: {self._failed!r}") from self._failed
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await migrate(self.settings.dsn)
            pool = await create_pool(self.settings.dsn)
            try:
                await write(self.settings, pool, three_versions_and_a_rollback(MODEL))
                self.admin, _ = await auth.create(pool, name="schemathesis", role="admin")
            finally:
                await pool.close()
            service = ApiService(self.settings, ApiSettings(port=0), publisher=self.recorder)
            await service.start()
        except BaseException as exc:  # reported by __enter__
            self._failed = exc
            self._ready.set()
            return
        self.url = service.url
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await service.stop()


@pytest.fixture(scope="module")
def running_api(settings: Settings) -> Iterator[ThreadedApi]:
    with ThreadedApi(settings) as api:
        yield api


# The published schema, as the app builds it (building connects nothing); the test below also
# checks the running server serves this very document.
schema = schemathesis.openapi.from_dict(build_asgi(Settings(), ApiSettings()).openapi())


def test_the_server_publishes_this_schema(running_api: ThreadedApi) -> None:
    served = httpx.get(f"{running_api.url}/openapi.json", timeout=30).json()
    assert served == schema.raw_schema
    assert served["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@schema.parametrize()
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")  # schemathesis' own strategies
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                     database=None)
def test_generated_requests_find_no_server_error_and_no_schema_violation(case: Any, running_api: ThreadedApi) -> None:
    case.call_and_validate(base_url=running_api.url, headers={"Authorization": f"Bearer {running_api.admin}"},
                           checks=CHECKS, timeout=15)


@pytest.mark.parametrize("route,path_parameters,query,status", [
    ("/api/v1/models", {}, {}, 200),
    ("/api/v1/models/{name}", {"name": MODEL}, {}, 200),
    ("/api/v1/models/{name}/versions/{version}", {"name": MODEL, "version": 2}, {}, 200),
    ("/api/v1/models/{name}/production", {"name": MODEL}, {}, 200),
    ("/api/v1/models/{name}/production", {"name": MODEL}, {"at": "2000-01-01T00:00:00Z"}, 404),
    ("/api/v1/models/{name}/versions/{version}/explain", {"name": MODEL, "version": 3}, {}, 200),
    ("/api/v1/audit", {}, {"model": MODEL, "limit": 3}, 200),
    ("/api/v1/models/{name}/versions/{version}/artifact", {"name": MODEL, "version": 1}, {}, 404),  # never uploaded
])
def test_the_seeded_models_documents_match_the_schema(running_api: ThreadedApi, route: str,
                                                      path_parameters: dict[str, Any], query: dict[str, Any],
                                                      status: int) -> None:
    """Random names rarely hit a model: the seeded one's documents are checked by name."""
    case = schema[route]["GET"].Case(path_parameters=path_parameters, query=query)
    response = case.call(base_url=running_api.url)
    assert response.status_code == status, response.text
    case.validate_response(response, checks=CHECKS)


def test_fuzzed_writes_were_published_only_to_the_recorder(running_api: ThreadedApi) -> None:
    kinds = {call[0] for call in running_api.recorder.calls}
    assert {"register", "evaluate"} <= kinds <= {"register", "evaluate", "request_promotion"}
    for kind, _args, kwargs in running_api.recorder.calls:
        if kind == "request_promotion":
            assert kwargs["actor"] == "schemathesis"  # the token's name, never a field of the request
