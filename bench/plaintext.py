"""What the secured bus costs: the throughput phase again, on a PLAINTEXT Kafka without ACLs.

The main run measures the registry as it ships (SASL_SSL, ACLs, signed events). This phase
starts a second, throwaway Kafka broker with no security on free ports, a second set of the
pipeline services against it (their own database on the stack's PostgreSQL, the same S3
server), pushes the same load and measures the same CPU. Events stay signed (signatures
cannot be switched off; the trust phase measures their cost on its own), so the difference
between the two runs is what TLS and SASL cost. Everything this phase starts it stops, and
its broker's files and database are deleted afterwards.

Two things keep the comparison fair on a machine whose load changes while it runs. The
secured load runs twice, before and after the PLAINTEXT one (A-B-A), and its figures are the
mean of both, so a load that rises or falls evenly cancels out. And CPU per version counts
only the work the load caused: what each process burns idle (polls, heartbeats), measured
before each run, is taken out for the run's wall time, so a run slowed down by a neighbour
is not charged for the seconds it waited.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import sys
import time
from typing import Any, cast

import asyncpg
from pydantic import SecretStr

from bench import pipeline, resources
from bench.context import Context
from bench.pipeline import cpu_ms_per_version, pipeline_rate
from bench.stats import mean_of_known
from bench.tap import wait_caught_up
from shared.broker import ensure_topics_once_up
from shared.settings import Settings
from shared.stack import kafka, postgres
from shared.stack.proc import alive, port_open, spawn, tail, terminate, wait_for

DATABASE = "modelreg_bench_plaintext"
IDLE_SECONDS = 15.0
_SECURED_ONLY = ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE",
                 "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _fresh_database(port: int) -> None:
    conn = await asyncpg.connect(postgres.dsn(port, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


async def _drop_database(port: int) -> None:
    conn = await asyncpg.connect(postgres.dsn(port, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await conn.close()


def compare(secured: dict[str, Any], plaintext: dict[str, Any], versions: int,
            signatures_ms: float | None, secured_again: dict[str, Any] | None = None) -> dict[str, Any]:
    """The runs side by side, and what security costs per version (pure: unit-tested). With
    `secured_again` (the secured load once more, after the PLAINTEXT run), the secured figures
    are the mean of both runs."""
    runs = [secured] if secured_again is None else [secured, secured_again]
    secured_ms = mean_of_known([cpu_ms_per_version(r, versions) for r in runs])
    plain_ms = cpu_ms_per_version(plaintext, versions)
    figures: dict[str, Any] = {
        "secured": {"staging_per_second": mean_of_known([pipeline_rate(r, "staging") for r in runs]),
                    "decided_per_second": mean_of_known([pipeline_rate(r, "decided") for r in runs]),
                    "cpu_ms_per_version": secured_ms, "runs": len(runs)},
        "plaintext": {"staging_per_second": pipeline_rate(plaintext, "staging"),
                      "decided_per_second": pipeline_rate(plaintext, "decided"), "cpu_ms_per_version": plain_ms},
        "signatures_cpu_ms_per_version": signatures_ms,
    }
    if secured_ms is not None and plain_ms is not None:
        figures["tls_sasl_cpu_ms_per_version"] = round(secured_ms - plain_ms, 2)
        figures["security_share_of_cpu_percent"] = round((secured_ms - plain_ms) / secured_ms * 100, 1)
    secured_rate, plain_rate = figures["secured"]["staging_per_second"], figures["plaintext"]["staging_per_second"]
    if secured_rate and plain_rate:
        figures["staging_throughput_ratio"] = round(secured_rate / plain_rate, 2)
    return figures


class PlaintextPipeline:
    """A PLAINTEXT broker and the pipeline services on it, for the length of one phase."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.stack = ctx.target.stack
        self.home = self.stack.dir / "bench-plaintext" / ctx.run_id
        self.logs = self.stack.dir / "logs" / f"bench-plaintext-{ctx.run_id}"
        self.kafka_pid: int | None = None
        self.services: dict[str, int] = {}
        self.port = _free_port()
        self.controller_port = _free_port()

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in self.ctx.target.env.items() if k not in _SECURED_ONLY}
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.port}", "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "DATABASE_URL": postgres.dsn(self.stack.ports.postgres, DATABASE), "MODELREG_HEALTH_PORT": "0",
            "MODELREG_SIGNING_KEY_FILE": str(self.stack.signing_key_file(name)),
            "MODELREG_KEYRING_FILE": str(self.stack.keyring_file), "MODELREG_ENV": "development",
        })
        return env

    async def start(self) -> None:
        log = self.ctx.log
        await _fresh_database(self.stack.ports.postgres)
        log(f"plaintext: starting a PLAINTEXT Kafka on 127.0.0.1:{self.port} (no TLS, no SASL, no ACLs)")
        self.kafka_pid = kafka.start(self.home, self.stack.cache_dir, self.port, self.controller_port, None)
        opened = await asyncio.to_thread(wait_for, lambda: port_open(self.port) or not alive(self.kafka_pid), 120)
        if not opened or not alive(self.kafka_pid):
            raise RuntimeError(f"the PLAINTEXT Kafka did not start:\n{tail(self.home / 'kafka.log')}")
        settings = self.settings()
        await ensure_topics_once_up(settings)
        logs = self.home / "logs"
        for name in resources.SERVICES:
            self.services[name] = spawn([sys.executable, "-m", "services.cli.main", "run", name],
                                        logs / f"{name}.log", env=self.env(name))
        deadline = time.monotonic() + 120
        waiting = set(resources.SERVICES)
        while waiting and time.monotonic() < deadline:
            for name in sorted(waiting):
                log_file = logs / f"{name}.log"
                if not alive(self.services[name]):
                    raise RuntimeError(f"the PLAINTEXT run's {name} service exited:\n{tail(log_file)}")
                if log_file.exists() and f"{name} started".encode() in log_file.read_bytes():
                    waiting.discard(name)
            await asyncio.sleep(0.2)
        if waiting:
            raise RuntimeError(f"{', '.join(sorted(waiting))} did not start on the PLAINTEXT Kafka; logs in "
                               f"{self.logs}")

    def settings(self) -> Settings:
        """The benchmark's own client settings (publisher, tap, lag) for the PLAINTEXT run."""
        return self.ctx.settings.model_copy(update={
            "kafka_bootstrap_servers": f"127.0.0.1:{self.port}", "kafka_security_protocol": "PLAINTEXT",
            "kafka_sasl_username": None, "kafka_sasl_password": None, "kafka_ssl_cafile": None,
            "database_url": SecretStr(postgres.dsn(self.stack.ports.postgres, DATABASE))})

    def procs(self) -> list[resources.Proc]:
        """The PLAINTEXT run's services and broker, and the stack's PostgreSQL and S3 (shared by both runs)."""
        shared = [p for p in self.ctx.target.procs() if p.name in ("postgres", "s3")]
        return [*(resources.Proc(n, pid) for n, pid in self.services.items()),
                resources.Proc("kafka", cast(int, self.kafka_pid)), *shared]  # set by start(), before any use

    async def stop(self, *, keep_logs: bool) -> None:
        for pid in self.services.values():
            await asyncio.to_thread(terminate, pid, timeout=40)
        await asyncio.to_thread(terminate, self.kafka_pid, timeout=40)
        if keep_logs and (self.home / "logs").exists():  # a failed run's logs, where the error says
            shutil.copytree(self.home / "logs", self.logs, dirs_exist_ok=True)
        shutil.rmtree(self.home, ignore_errors=True)
        await _drop_database(self.stack.ports.postgres)


async def run(ctx: Context, results: dict[str, Any]) -> dict[str, Any]:
    plain = PlaintextPipeline(ctx)
    failed = True
    try:
        await plain.start()
        target = dataclasses.replace(ctx.target, settings=plain.settings())
        plain_ctx = dataclasses.replace(ctx, target=target)
        # A fresh broker and fresh service processes start cold, like the secured stack's.
        await pipeline.warm_up(plain_ctx, "pw", label="plaintext warm-up")
        await wait_caught_up(target.settings, resources.SERVICES, timeout=60)
        idle = await resources.idle_cpu(plain.procs(), IDLE_SECONDS)
        measured = await pipeline.run(plain_ctx, plain.procs(), idle=idle)
        failed = False
    finally:
        await plain.stop(keep_logs=failed)
    ctx.log("plaintext: the secured load once more, so both secured runs bracket the PLAINTEXT one")
    await wait_caught_up(ctx.settings, resources.SERVICES, timeout=60)
    secured = results.get("throughput") or {}
    again = await pipeline.run(ctx, ctx.target.procs(), idle=secured.get("idle_cpu_per_second"), kind="t2")
    signatures = (results.get("trust") or {}).get("cpu_ms_per_version")
    figures = compare(secured, measured, ctx.config.versions, signatures, secured_again=again)
    figures["secured_again_run"] = {k: v for k, v in again.items() if k != "curves"}
    figures["plaintext_run"] = {k: v for k, v in measured.items() if k != "curves"}
    ctx.log(f"plaintext: {figures['plaintext']['staging_per_second']} versions/s to staging at "
            f"{figures['plaintext']['cpu_ms_per_version']} CPU ms/version; secured "
            f"{figures['secured']['staging_per_second']}/s at {figures['secured']['cpu_ms_per_version']} ms")
    return figures
