"""The local stack's S3 API server: versitygw (Go, Apache-2.0) on a directory, built once
from the Go module proxy; moto in server mode where no Go toolchain is available.

versitygw keeps objects as files (metadata and tags in a sidecar directory), so data
survives restarts by itself, answers with HTTP keep-alive, and serves thousands of small
requests a second. moto holds objects in memory (our wrapper saves them on a clean stop)
and manages a few hundred requests a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from shared.stack.proc import StackError, spawn

VERSITYGW_VERSION = os.environ.get("MODELREG_VERSITYGW_VERSION", "v1.8.0")
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"


def choose(cache_dir: Path, log: Callable[[str], None]) -> tuple[str, Path | None]:
    """("versitygw", binary) where it can be had, else ("moto", None)."""
    wanted = os.environ.get("MODELREG_S3_SERVER", "versitygw")
    if wanted not in ("versitygw", "moto"):
        raise StackError(f"MODELREG_S3_SERVER: expected versitygw or moto, got {wanted!r}")
    if wanted == "versitygw":
        binary = versitygw_binary(cache_dir, log)
        if binary is not None:
            return "versitygw", binary
        log("no Go toolchain to build versitygw: falling back to moto (slower; install Go for speed)")
    if importlib.util.find_spec("moto") is None:
        raise StackError("no S3 server available: install Go (for versitygw) or pip install 'modelreg[stack]' "
                         "(for moto)")
    return "moto", None


def versitygw_binary(cache_dir: Path, log: Callable[[str], None]) -> Path | None:
    home = cache_dir / f"versitygw-{VERSITYGW_VERSION}"
    binary = home / "versitygw"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if not go:
        return None
    log(f"building versitygw {VERSITYGW_VERSION} from the Go module proxy (first run only, a few minutes)")
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([go, "install", f"{VERSITYGW_MODULE}@{VERSITYGW_VERSION}"],
                            env={**os.environ, "GOBIN": str(home), "CGO_ENABLED": "0"},
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0 or not binary.exists():
        log(f"building versitygw failed:\n{(result.stdout + result.stderr)[-1500:]}")
        return None
    return binary


def start(kind: str, binary: Path | None, stack_dir: Path, port: int, access_key: str, secret_key: str,
          ready_file: Path, import_root: str) -> int:
    log_file = stack_dir / "logs" / "s3.log"
    if kind == "versitygw":
        assert binary is not None
        data, meta = stack_dir / "s3-data", stack_dir / "s3-meta"
        data.mkdir(parents=True, exist_ok=True)
        meta.mkdir(parents=True, exist_ok=True)
        return spawn([str(binary), "--access", access_key, "--secret", secret_key,
                      "--port", f"127.0.0.1:{port}", "--keep-alive", "--quiet",
                      "posix", "--sidecar", str(meta), str(data)], log_file,
                     env={**os.environ, "VGW_DISABLE_OTMP": "true"})
    return spawn([sys.executable, "-m", "shared.stack.s3server", "--port", str(port), "--data",
                  str(stack_dir / "s3"), "--ready-file", str(ready_file)], log_file,
                 env={**os.environ, "PYTHONPATH": import_root})
