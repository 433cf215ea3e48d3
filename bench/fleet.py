"""The registry's services as OS processes that a run may SIGKILL and start again, and what
their health ports say (readiness per dependency, consumer lag).

Shared by the benchmark's soak and the fault and resilience tests: each service gets a
health port of its own, chosen once, so its `/readyz` and `/metrics` stay at one address
across restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

SERVICES = ("ingest", "validation", "promotion", "archival", "audit")
ROOT = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Readiness:
    status: int | None            # None: the port did not answer (process down or starting)
    checks: dict[str, str]        # dependency -> "ok" or what is wrong

    def down(self, dependency: str) -> bool:
        """Unready because of `dependency`."""
        return self.status == 503 and self.checks.get(dependency, "ok") != "ok"


class Fleet:
    """Each service its own process, started with `env(name)` (its Kafka principal, the
    run's database and topics) plus its health port."""

    def __init__(self, env: Callable[[str], dict[str, str]], logs: Path | None = None,
                 services: Iterable[str] = SERVICES) -> None:
        self._env = env
        self.services = tuple(services)
        self.logs = logs
        self.ports = {name: free_port() for name in self.services}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.kills: dict[str, int] = dict.fromkeys(self.services, 0)
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str) -> None:
        env = {**os.environ, **self._env(name), "MODELREG_HEALTH_PORT": str(self.ports[name]),
               "PYTHONPATH": str(ROOT)}
        out: Any = subprocess.DEVNULL
        if self.logs is not None:
            out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", name], env=env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def start_all(self) -> None:
        for name in self.services:
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown hook runs, whatever was in flight is cut."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.kills[name] += 1

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def all_running(self) -> bool:
        return all(self.running(name) for name in self.services)

    def exited(self) -> list[str]:
        """Services that ended by themselves (not killed by the run and not yet restarted)."""
        return [name for name in self.services if name in self.processes and not self.running(name)]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- what the health ports say ------------------------------------------------------

    async def readiness(self, name: str) -> Readiness:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as session, \
                    session.get(f"http://127.0.0.1:{self.ports[name]}/readyz") as response:
                body = await response.json()
                return Readiness(response.status, dict(body.get("checks") or {}))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return Readiness(None, {})

    async def readiness_all(self) -> dict[str, Readiness]:
        states = await asyncio.gather(*(self.readiness(name) for name in self.services))
        return dict(zip(self.services, states, strict=True))

    async def consumer_lag(self, name: str) -> int | None:
        """The sum of the service's `modelreg_consumer_lag` gauge (what an alert reads); None
        when its metrics do not answer."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as session, \
                    session.get(f"http://127.0.0.1:{self.ports[name]}/metrics") as response:
                text = await response.text()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
        return gauge_sum(text, "modelreg_consumer_lag")


def gauge_sum(metrics_text: str, metric: str) -> int:
    """The sum of every sample of `metric` in Prometheus text (0 when it has none)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(metric + "{") or line.startswith(metric + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.5) -> bool:
    """Poll an async `check` until it is truthy; False when `timeout` passes first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(interval)


async def wait_all_unready(fleet: Fleet, dependency: str, timeout: float = 120) -> dict[str, Readiness]:
    """Until every service answers 503 naming `dependency`; raises with what they said if not."""
    states: dict[str, Readiness] = {}

    async def unready() -> bool:
        nonlocal states
        states = await fleet.readiness_all()
        return all(state.down(dependency) for state in states.values())

    if not await wait_until(unready, timeout):
        raise AssertionError(f"not every service went unready for {dependency} within {timeout:.0f}s: "
                             f"{ {n: (s.status, s.checks) for n, s in states.items()} }")
    return states


async def wait_all_ready(fleet: Fleet, timeout: float = 300) -> None:
    """Until every service answers 200 on `/readyz`; raises with what they said if not."""
    states: dict[str, Readiness] = {}

    async def ready() -> bool:
        nonlocal states
        states = await fleet.readiness_all()
        return all(state.status == 200 for state in states.values())

    if not await wait_until(ready, timeout):
        raise AssertionError(f"not every service was ready again within {timeout:.0f}s: "
                             f"{ {n: (s.status, s.checks) for n, s in states.items()} }")
