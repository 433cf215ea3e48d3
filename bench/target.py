"""The system under test: the local stack, the registry's services as OS processes, the API.

`prepare()` runs before the event loop (the stack launcher runs its own): it starts the stack
and any service that is not running. `Target.close()` stops only what the benchmark started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import resources
from bench.resources import Proc
from services.cli.up import service_env
from shared.settings import Settings, load_settings
from shared.stack.launcher import LocalStack
from shared.stack.proc import terminate

Log = Callable[[str], None]


@dataclass
class Target:
    stack: LocalStack
    settings: Settings
    env: dict[str, str]                 # what the services were (or would be) started with
    services: dict[str, int]            # name -> pid
    started: list[str] = field(default_factory=list)
    log_offsets: dict[str, int] = field(default_factory=dict)  # where each started service's log began
    api: subprocess.Popen[bytes] | None = None

    async def wait_started(self, log: Log, timeout: float = 120) -> None:
        """Until each service the benchmark started has logged "NAME started" (consumers assigned)."""
        waiting = set(self.started)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for name in sorted(waiting):
                if not resources.alive(self.services.get(name)):
                    raise RuntimeError(f"the {name} service exited; see {self._log(name)}")
                with open(self._log(name), "rb") as handle:
                    handle.seek(self.log_offsets.get(name, 0))
                    if f"{name} started".encode() in handle.read():
                        waiting.discard(name)
            await asyncio.sleep(0.2)
        if waiting:
            log(f"{', '.join(sorted(waiting))} did not log that they started within {timeout:.0f}s; going on")

    def _log(self, name: str) -> Path:
        return self.stack.dir / "logs" / f"{name}.log"

    def procs(self) -> list[Proc]:
        """Every part whose memory and CPU the benchmark reports."""
        procs = [Proc(name, pid) for name, pid in self.services.items() if resources.alive(pid)]
        state, ports = self.stack.state, self.stack.ports
        infra = {"kafka": (state.kafka_pid, ports.kafka),
                 "postgres": (resources.postmaster_pid(state.postgres_dir), ports.postgres),
                 "s3": (state.s3_pid, ports.s3)}
        for name, (pid, port) in infra.items():
            if not resources.alive(pid):  # a stack started from another directory: whoever listens
                pid = resources.listener_pid(port)
            if pid and resources.alive(pid):
                procs.append(Proc(name, pid, with_children=name == "postgres"))
        return procs

    @property
    def s3_server(self) -> str:
        return self.stack.state.s3_server or "?"

    async def ensure_api(self, url: str, log: Log, timeout: float = 90) -> str:
        """The API at `url`; `modelreg run api` in a subprocess when nothing answers there.
        Returns "running" or "started"."""
        if await _api_answers(url):
            return "running"
        port = url.rsplit(":", 1)[-1].split("/")[0]
        log(f"starting the API (`modelreg run api`) on port {port}")
        log_file = self.stack.dir / "logs" / "bench-api.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            self.api = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", "api"], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**self.env, **self.stack.kafka_env("api"), "MODELREG_API_PORT": port,
                                               "MODELREG_HEALTH_PORT": "0"}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited with code {self.api.returncode}; see {log_file}")
            if await _api_answers(url):
                return "started"
            await asyncio.sleep(0.3)
        raise RuntimeError(f"the API did not answer on {url} within {timeout:.0f}s; see {log_file}")

    def close(self, log: Log) -> None:
        if self.api is not None and self.api.poll() is None:
            log("stopping the API the benchmark started")
            self.api.send_signal(signal.SIGTERM)
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
        if self.started:
            log(f"stopping the services the benchmark started: {', '.join(self.started)}")
            for name in self.started:
                terminate(self.services.get(name), timeout=40)


async def _api_answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session, \
                session.get(f"{url}/api/v1/health") as response:
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


def prepare(log: Log, *, start_services: bool = True) -> Target:
    """Start the local stack and (unless told not to) every pipeline service that is not running yet."""
    stack = LocalStack()
    if not stack.serving():
        log(f"starting the local stack in {stack.dir}")
        stack.up(log=lambda line: log(f"stack: {line}"))
    env = {**service_env(), **stack.env(), "PYTHONPATH": _import_root()}
    settings = load_settings(**{name.lower(): value for name, value in stack.env().items()})
    running = resources.find_services(settings.kafka_bootstrap_servers, settings.topic_prefix)
    missing = [name for name in resources.SERVICES if name not in running] if start_services else []
    offsets = {}
    if missing:
        log(f"starting {', '.join(missing)} as background processes (logs in {stack.dir / 'logs'})")
        for name in missing:
            path = stack.dir / "logs" / f"{name}.log"
            offsets[name] = path.stat().st_size if path.exists() else 0
        stack.start_services(tuple(missing), env, log=lambda line: None)
        running = {**running, **{name: stack.state.services[name] for name in missing}}
    return Target(stack, settings, env, running, started=missing, log_offsets=offsets)


def _import_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def describe_machine() -> dict[str, object]:
    load = os.getloadavg()
    try:
        mem = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        mem = 0
    return {"cpus": os.cpu_count(), "memory_gib": round(mem / 1024**3, 1),
            "load_average_at_start": [round(x, 2) for x in load], "python": sys.version.split()[0]}
