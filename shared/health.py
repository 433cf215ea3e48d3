"""Each service's own HTTP port: `/healthz` (alive), `/readyz` (Kafka, PostgreSQL and S3
reachable, migrations applied) and `/metrics` (Prometheus text)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

# Ports when MODELREG_HEALTH_PORT is unset, so the services of one machine do not collide.
DEFAULT_PORTS = {"ingest": 8081, "validation": 8082, "promotion": 8083, "archival": 8084, "audit": 8085,
                 "webhooks": 8086}
CHECK_TIMEOUT = 2.0

Check = Callable[[], Awaitable[Any]]


class HealthServer:
    def __init__(self, service: str, port: int, checks: dict[str, Check],
                 before_scrape: Callable[[], Awaitable[None]] | None = None, host: str = "127.0.0.1") -> None:
        self.service = service
        self._host = host  # loopback unless told otherwise (MODELREG_HEALTH_HOST): metrics tell a lot
        self._port = port
        self._checks = checks
        self._before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[attr-defined]  # asyncio.Server's
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("%s: health and metrics on http://127.0.0.1:%d/{healthz,readyz,metrics}", self.service, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "service": self.service})

    async def ready(self) -> dict[str, str]:
        """Each dependency's state: "ok" or what is wrong."""
        names = list(self._checks)
        outcomes = await asyncio.gather(*(asyncio.wait_for(self._checks[n](), CHECK_TIMEOUT) for n in names),
                                        return_exceptions=True)
        return {name: "ok" if not isinstance(outcome, BaseException) else
                (f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__)
                for name, outcome in zip(names, outcomes, strict=True)}

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = await self.ready()
        ready = all(state == "ok" for state in checks.values())
        return web.json_response({"status": "ready" if ready else "unready", "service": self.service,
                                  "checks": checks}, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            try:
                await self._before_scrape()
            except Exception as exc:  # a scrape still answers with what it has
                log.debug("refreshing metrics failed: %s", exc)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
