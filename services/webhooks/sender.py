"""One HTTP POST of one signed message: bounded in time and in what it reads back.

No redirects are followed (a 3xx is a failed attempt: a redirect could lead anywhere), no
proxy settings from the environment apply, and the connector reaches only addresses the SSRF
guard allows (`ssrf.GuardedResolver`, and the literal-address check before each request).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from shared.webhooks import ssrf

EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class Outcome:
    status: int | None  # None: no HTTP answer
    latency_ms: float
    error: str | None
    excerpt: str | None
    retry_after: str | None
    attempted_at: datetime


class Sender:
    def __init__(self, *, allowed: tuple[ssrf.Network, ...], timeout_seconds: float, max_response_bytes: int,
                 connections: int = 64) -> None:
        self.allowed = allowed
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.max_response_bytes = max_response_bytes
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        connector = aiohttp.TCPConnector(resolver=ssrf.GuardedResolver(self.allowed), limit=self._connections,
                                         limit_per_host=0, use_dns_cache=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, trust_env=False,
                                              auto_decompress=False,
                                              headers={"User-Agent": "modelreg-webhooks/1"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        assert self._session is not None, "use `async with Sender(...)`"
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()

        def outcome(status: int | None, error: str | None, excerpt: str | None = None,
                    retry_after: str | None = None) -> Outcome:
            return Outcome(status, (time.perf_counter() - started) * 1000, error, excerpt, retry_after, attempted_at)

        if (refusal := ssrf.refusal_for_url(url, self.allowed)) is not None:
            return outcome(None, f"refused: {refusal}")
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                read = await response.content.read(self.max_response_bytes)
                # What is beyond the cap is never read: the connection is closed, not drained.
                capped = not response.content.at_eof()
                if capped:
                    response.close()
                excerpt = read[:EXCERPT_BYTES].decode("utf-8", "replace") or None
                error = None if 200 <= response.status < 300 else f"HTTP {response.status}"
                if capped:
                    error = (error + "; " if error else "") + f"response over {self.max_response_bytes} bytes, cut"
                return outcome(response.status, error, excerpt, response.headers.get("Retry-After"))
        except TimeoutError:
            return outcome(None, f"no answer within {self.timeout.total:g}s")
        except ssrf.RefusedAddress as exc:
            return outcome(None, f"refused: {exc}")
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, ssrf.RefusedAddress):
                return outcome(None, f"refused: {cause}")
            return outcome(None, ssrf.describe(cause or exc))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return outcome(None, ssrf.describe(exc))
