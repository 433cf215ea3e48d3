"""`modelreg up`: the local stack and every service in the foreground, one process each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from shared.stack.launcher import LocalStack

COLOURS = ("36", "33", "35", "32", "34", "31")


class ServiceProcesses:
    """Each service as its own OS process (as in production), output prefixed with its name."""

    def __init__(self, services: Sequence[str], env: dict[str, str], *, echo: bool = True,
                 log_file: Path | None = None, key_files: dict[str, Path] | None = None,
                 own_env: dict[str, dict[str, str]] | None = None) -> None:
        self.services = services
        self.env = env
        self.key_files = key_files or {}  # service -> its private signing key
        self.own_env = own_env or {}  # service -> its own settings (its Kafka principal's)
        self.echo = echo
        self.log_file = log_file
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self._log_lock = threading.Lock()

    def start(self) -> None:
        for index, name in enumerate(self.services):
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", name], env=self._env(name),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            self.processes[name] = process
            colour = COLOURS[index % len(COLOURS)]
            threading.Thread(target=self._pump, args=(name, colour, process.stdout), daemon=True).start()

    def _env(self, service: str) -> dict[str, str]:
        key = self.key_files.get(service)
        env = {**self.env, **self.own_env.get(service, {})}
        return {**env, "MODELREG_SIGNING_KEY_FILE": str(key)} if key else env

    def _pump(self, name: str, colour: str, stream: IO[str] | None) -> None:
        if stream is None:
            return
        tty = sys.stdout.isatty()
        log = open(self.log_file, "a") if self.log_file else None  # noqa: SIM115 (closed below)
        try:
            for line in stream:
                if self.echo:
                    label = f"\033[{colour}m{name:>10}\033[0m" if tty else f"{name:>10}"
                    sys.stdout.write(f"{label} | {line}")
                if log is not None:
                    with self._log_lock:
                        log.write(f"{name:>10} | {line}")
                        log.flush()
        finally:
            if log is not None:
                log.close()

    def exited(self) -> str | None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 40
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


def default_policy() -> str | None:
    """The example policy of a source checkout (`infra/policy.yaml`), used when
    MODELREG_POLICY_FILE is unset; an installed package falls back to the built-in default."""
    candidate = Path(__file__).resolve().parents[2] / "infra" / "policy.yaml"
    return str(candidate) if candidate.exists() else None


def service_env() -> dict[str, str]:
    """The environment services start with: this one, plus the example policy where unset."""
    env = dict(os.environ)
    if not env.get("MODELREG_POLICY_FILE") and (policy := default_policy()):
        env["MODELREG_POLICY_FILE"] = policy
    return env


def run(services: Sequence[str]) -> int:
    stack = LocalStack()
    stack.up()
    stack.stop_services()  # the foreground takes over from background ones
    processes = ServiceProcesses(services, {**service_env(), **stack.env()},
                                 key_files={name: stack.signing_key_file(name) for name in services},
                                 own_env={name: stack.kafka_env(name) for name in services})
    processes.start()
    print(f"modelreg is up: {', '.join(services)}. Ctrl-C stops the services "
          "(the stack keeps running: `modelreg stack down`).", flush=True)
    try:
        while (gone := processes.exited()) is None:
            time.sleep(0.5)
        print(f"modelreg: service {gone} exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        processes.stop()
