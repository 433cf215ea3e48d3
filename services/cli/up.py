"""`modelreg up`: the local stack and every service in the foreground, one process each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from shared.stack.launcher import LocalStack

COLOURS = ("36", "33", "35", "32", "34", "31")


class ServiceProcesses:
    """Each service as its own OS process (as in production), output prefixed with its name."""

    def __init__(self, services: Sequence[str], env: dict[str, str], *, echo: bool = True) -> None:
        self.services = services
        self.env = env
        self.echo = echo
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def start(self) -> None:
        for index, name in enumerate(self.services):
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "run", name], env=self.env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            self.processes[name] = process
            colour = COLOURS[index % len(COLOURS)]
            threading.Thread(target=self._pump, args=(name, colour, process.stdout), daemon=True).start()

    def _pump(self, name: str, colour: str, stream: IO[str] | None) -> None:
        if stream is None:
            return
        tty = sys.stdout.isatty()
        for line in stream:
            if self.echo:
                label = f"\033[{colour}m{name:>10}\033[0m" if tty else f"{name:>10}"
                sys.stdout.write(f"{label} | {line}")

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


def run(services: Sequence[str]) -> int:
    stack = LocalStack()
    stack.up()
    processes = ServiceProcesses(services, {**os.environ, **stack.env()})
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
