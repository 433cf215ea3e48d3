"""Processes of the stack and the registry: which pids, their memory, their CPU time.

Everything comes from /proc: VmRSS from /proc/PID/status, utime+stime from /proc/PID/stat
(plus cutime+cstime for PostgreSQL's postmaster, which reaps the backends that end during a
run), and, for PostgreSQL's many processes, the proportional set size (Pss) from
/proc/PID/smaps_rollup so shared buffers are not counted once per backend.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("ingest", "validation", "promotion", "archival", "audit")
INFRA = ("kafka", "postgres", "s3")
TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


@dataclass
class Proc:
    """One named part of the system: a process, or (PostgreSQL) a parent and its children."""

    name: str
    pid: int
    with_children: bool = False

    def pids(self) -> list[int]:
        return [self.pid, *children(self.pid)] if self.with_children else [self.pid]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            fields = _stat(pid)
            if fields is None:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == self.pid and self.with_children:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped backends
        return total / TICK

    def memory_bytes(self) -> int:
        """VmRSS of a process; the summed Pss of a process group (PostgreSQL)."""
        if not self.with_children:
            return rss_bytes(self.pid) or 0
        return sum(pss_bytes(pid) or 0 for pid in self.pids())


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return rss_bytes(pid)
    return None


def children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def alive(pid: int | None) -> bool:
    fields = _stat(pid) if pid else None
    return fields is not None and fields[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def find_services(kafka: str, topic_prefix: str, names: tuple[str, ...] = SERVICES) -> dict[str, int]:
    """Service processes (`modelreg run NAME` / `python -m services.cli.main run NAME`) talking to
    this Kafka with this topic prefix, wherever they were started from."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if "run" not in argv or not any(a.endswith(("modelreg", "services.cli.main")) for a in argv):
            continue
        at = argv.index("run")
        name = argv[at + 1] if at + 1 < len(argv) else ""
        if name not in names or name in found or not alive(int(entry.name)):
            continue
        env = _environ(int(entry.name))
        if (env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092") == kafka
                and env.get("MODELREG_TOPIC_PREFIX", "") == topic_prefix):
            found[name] = int(entry.name)
    return found


def postmaster_pid(pgdata: str | None) -> int | None:
    try:
        return int(Path(pgdata or "", "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Snapshot:
    """CPU seconds of each part at one moment."""

    at: float
    cpu: dict[str, float]


def snapshot(procs: list[Proc]) -> Snapshot:
    return Snapshot(time.monotonic(), {p.name: p.cpu_seconds() for p in procs})


def cpu_rates(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each part used per second of wall time between two snapshots (1.0: one core)."""
    wall = after.at - before.at
    return {name: round((after.cpu[name] - before.cpu[name]) / wall, 5) for name in before.cpu} if wall > 0 else {}


async def idle_cpu(procs: list[Proc], seconds: float) -> dict[str, float]:
    """What each part burns doing nothing (polls, heartbeats, timers), per second, over `seconds`."""
    before = snapshot(procs)
    await asyncio.sleep(seconds)
    return cpu_rates(before, snapshot(procs))


@dataclass
class RssSampler:
    """VmRSS of one process every `interval` seconds on a thread, from `start()` to `stop()`."""

    pid: int
    interval: float = 0.05
    baseline: int = 0
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.baseline = self.peak = rss_bytes(self.pid) or 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = rss_bytes(self.pid)
            if value is None:
                return
            self.samples += 1
            self.peak = max(self.peak, value)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid) or 0)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` (any local address), from /proc/net/tcp{,6} and the
    processes' socket descriptors; None when there is none or it cannot be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None
