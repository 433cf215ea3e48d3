"""The champion lookup without FastAPI's routing, dependencies and response validation.

Deployment systems poll `GET /api/v1/models/{name}/production` more than anything else. When
reads are open and the request is the plain form (no `?at=`), this ASGI layer answers it
from the champion cache with a body rendered once per champion, and a 304 for a matching
`If-None-Match`. Everything else (tokens, `?at=`, unknown models, errors) falls through to
the full route, which stays the reference: the body here is its response model's rendering.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import documents, production, queries
from .schemas import Production

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[None]]], Awaitable[None]]

_PATH = re.compile(r"^/api/v1/models/([a-z0-9][a-z0-9._-]{0,127})/production$")
ROUTE = "/api/v1/models/{name}/production"


class ProductionFastPath:
    def __init__(self, app: ASGIApp, *, observe: Callable[[str, int, float], None] | None = None) -> None:
        self.app = app
        self._observe = observe
        self._rendered: dict[str, tuple[int, int, str, bytes]] = {}  # name -> (champion, seq, etag, body)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
            return await self.app(scope, receive, send)
        match = _PATH.match(scope["path"])
        resources = getattr(getattr(scope.get("app"), "state", None), "resources", None)
        if match is None or resources is None or not resources.api.open_reads:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        name = match.group(1)
        found = await resources.cache.lookup(name, lambda: queries.production(resources.pool, name))
        if found is None or found["champion"] is None:
            return await self.app(scope, receive, send)  # the route words the 404
        etag, body = self._render(name, found)
        if_none_match = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None)
        status = 304 if production.not_modified(if_none_match, etag) else 200
        headers = [(b"etag", etag.encode()), (b"cache-control", b"no-cache")]
        if status == 200:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if status == 200 else b""})
        if self._observe is not None:
            self._observe(ROUTE, status, time.perf_counter() - started)

    def _render(self, name: str, found: dict[str, Any]) -> tuple[str, bytes]:
        champion, seq = found["champion"], found["champion_seq"]
        cached = self._rendered.get(name)
        if cached is not None and cached[0] == champion and cached[1] == seq:
            return cached[2], cached[3]
        document = {"name": name, "version": champion, "since": found["since"],
                    "artifact": documents.artifact_doc({**found, "stage": "production"})}
        body = Production.model_validate(document).model_dump_json().encode()
        etag = production.etag(name, champion, seq)
        if len(self._rendered) > 10_000:
            self._rendered.clear()
        self._rendered[name] = (champion, seq, etag, body)
        return etag, body
