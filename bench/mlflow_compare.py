"""`--compare-mlflow`: an MLflow server with a PostgreSQL backend store (database `mlflow_bench` on
the stack's PostgreSQL, created afresh and dropped afterwards), measured on the same machine by
`mlflow_client.py`. mlflow is never a modelreg dependency: it comes from an interpreter that
has it, or is installed into bench/.mlflow-venv on first use (from PyPI)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench.context import Context
from shared.stack.proc import terminate

HERE = Path(__file__).resolve().parent
VENV = HERE / ".mlflow-venv"
DATABASE = "mlflow_bench"
# MLflow at its best here (the issue measured it so): gunicorn with 4 workers, 8 client threads.
# Its default uvicorn server adds about 40 ms a request through a keep-alive artefact
# (uvicorn#3149), so a comparison against it would flatter modelreg.
MLFLOW_WORKERS = 4
MLFLOW_CLIENT_THREADS = 8
MLFLOW_REQUIREMENTS = (("mlflow>=3.17,<3.18", "psycopg2-binary"), ("mlflow", "psycopg2-binary"))


def _has_mlflow(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import mlflow, psycopg2"], capture_output=True)
    return probe.returncode == 0


def interpreter(log: Any) -> str:
    """A Python that imports mlflow and psycopg2, installing them into bench/.mlflow-venv if none does."""
    venv_python = VENV / "bin" / "python"
    for candidate in (str(venv_python), sys.executable):
        if Path(candidate).exists() and _has_mlflow(candidate):
            return candidate
    if not venv_python.exists():
        log(f"creating {VENV} for MLflow (first use)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    for requirements in MLFLOW_REQUIREMENTS:
        log(f"installing {' '.join(requirements)} into {VENV} (first use; a few minutes)")
        done = subprocess.run([str(venv_python), "-m", "pip", "install", "-q", *requirements],
                              capture_output=True, text=True)
        if done.returncode == 0 and _has_mlflow(str(venv_python)):
            return str(venv_python)
    raise RuntimeError(f"could not install mlflow into {VENV}: {done.stderr.strip()[-500:]}")


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _recreate_database(dsn: str, *, drop_only: bool = False) -> None:
    conn = await asyncpg.connect(_with_database(dsn, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        if not drop_only:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


async def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {server.returncode}")
            try:
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer on {url} within {timeout:.0f}s")


async def run(ctx: Context) -> dict[str, Any]:
    python = await asyncio.to_thread(interpreter, ctx.log)
    dsn = ctx.settings.dsn
    await _recreate_database(dsn)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = Path(tempfile.mkdtemp(prefix="modelreg-bench-mlflow-"))
    log_file = ctx.target.stack.dir / "logs" / "bench-mlflow.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    ctx.log(f"mlflow: starting `mlflow server` (gunicorn, {MLFLOW_WORKERS} workers) on {url} "
            f"(backend: PostgreSQL database {DATABASE}; log {log_file})")
    with open(log_file, "ab") as out:
        server = subprocess.Popen(
            [python, "-m", "mlflow", "server",
             "--backend-store-uri", _with_database(dsn, DATABASE).replace("postgresql://", "postgresql+psycopg2://", 1),
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(MLFLOW_WORKERS), "--gunicorn-opts", "--log-level warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    try:
        await _wait_healthy(url, server, timeout=240)
        config = ctx.config
        versions = 1000  # the reference's lookup is "with 1,000 versions"
        ctx.log(f"mlflow: {versions:,} registrations, {min(300, versions)} promotions, 2,000 alias lookups "
                f"over {MLFLOW_CLIENT_THREADS} threads")
        client = await asyncio.create_subprocess_exec(
            python, str(HERE / "mlflow_client.py"), "--url", url, "--versions", str(versions),
            "--models", str(min(config.models, versions)), "--promotions", "300", "--lookups", "2000",
            "--concurrency", str(MLFLOW_CLIENT_THREADS), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(client.communicate(), timeout=max(600.0, config.timeout))
        if client.returncode != 0:
            raise RuntimeError(f"the MLflow client failed: {stderr.decode(errors='replace')[-800:]}")
        measured = json.loads(stdout.decode().strip().splitlines()[-1])
    finally:
        await asyncio.to_thread(terminate, server.pid, timeout=20)
        server.wait()
        shutil.rmtree(artifacts, ignore_errors=True)
        await _recreate_database(dsn, drop_only=True)
    return {**measured, "server": f"gunicorn, {MLFLOW_WORKERS} workers", "client_threads": MLFLOW_CLIENT_THREADS,
            "interpreter": python, "backend": f"PostgreSQL database {DATABASE} (dropped afterwards)"}
