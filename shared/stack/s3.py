"""The local stack's S3 API server: versitygw (Go, Apache-2.0) on a directory, built once
from the Go module proxy; moto in server mode where no Go toolchain is available.

versitygw keeps objects as files (metadata and tags in a sidecar directory), so data
survives restarts by itself, answers with HTTP keep-alive, and serves thousands of small
requests a second. moto holds objects in memory (our wrapper saves them on a clean stop)
and manages a few hundred requests a second.

Two S3 accounts on versitygw: the root one (the services', the bucket's owner) and
`publisher`, a plain user (internal IAM in `s3-iam/`, its secret in `s3-accounts.json`,
0600) that the bucket's policy lets write under `uploads/` only (shared/upload_policy.py).
moto checks neither signatures nor policies: there every credential can do everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.stack.kafka_auth import write_private
from shared.stack.proc import StackError, spawn
from shared.upload_policy import publisher_bucket_policy

VERSITYGW_VERSION = os.environ.get("MODELREG_VERSITYGW_VERSION", "v1.8.0")
VERSITYGW_MODULE = "github.com/versity/versitygw/cmd/versitygw"
PUBLISHER = "publisher"  # the S3 account of outside publishers (pipelines, the CLI, the importer)
INSECURE_FALLBACK = ("INSECURE S3 fallback: moto checks no signatures and no bucket policies, so the "
                     "publisher credential can write artifacts/ too (uploads are NOT confined to uploads/); "
                     "install Go so the stack runs versitygw")


@dataclass(frozen=True)
class S3Account:
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


def accounts_file(stack_dir: Path) -> Path:
    return stack_dir / "s3-accounts.json"


def publisher_account(stack_dir: Path) -> S3Account:
    """The publisher account's keys: made once (a random secret, kept 0600), then reused."""
    path = accounts_file(stack_dir)
    try:
        stored = json.loads(path.read_text())[PUBLISHER]
        return S3Account(stored["access_key"], stored["secret_key"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is damaged ({exc}); delete it and run `modelreg stack up` again") from None
    account = S3Account(PUBLISHER, secrets.token_urlsafe(24))
    stack_dir.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps({PUBLISHER: {"access_key": account.access_key,
                                                "secret_key": account.secret_key}}, indent=2).encode())
    return account


def ensure_account(binary: Path, port: int, root: S3Account, account: S3Account) -> None:
    """A plain `user` account on a running versitygw (its internal IAM), with this secret."""
    admin = [str(binary), "admin", "--endpoint-url", f"http://127.0.0.1:{port}"]
    # The root keys go through the environment; the admin tool takes the new secret only as an
    # argument, visible in `ps` for the instant it runs (this is a development stack).
    env = {**os.environ, "ADMIN_ACCESS_KEY_ID": root.access_key, "ADMIN_SECRET_ACCESS_KEY": root.secret_key}
    created = subprocess.run([*admin, "create-user", "--access", account.access_key, "--secret",
                              account.secret_key, "--role", "user"],
                             env=env, capture_output=True, text=True, timeout=60)
    if created.returncode == 0:
        return
    if "UserExists" not in created.stdout + created.stderr:
        raise StackError(f"versitygw refused to create the S3 account {account.access_key!r}: "
                         f"{(created.stdout + created.stderr).strip()[-500:]}")
    updated = subprocess.run([*admin, "update-user", "--access", account.access_key, "--secret",
                              account.secret_key, "--role", "user"],
                             env=env, capture_output=True, text=True, timeout=60)
    if updated.returncode != 0:
        raise StackError(f"versitygw refused to update the S3 account {account.access_key!r}: "
                         f"{(updated.stdout + updated.stderr).strip()[-500:]}")


def choose(cache_dir: Path, log: Callable[[str], None]) -> tuple[str, Path | None]:
    """("versitygw", binary) where it can be had, else ("moto", None)."""
    wanted = os.environ.get("MODELREG_S3_SERVER", "versitygw")
    if wanted not in ("versitygw", "moto"):
        raise StackError(f"MODELREG_S3_SERVER: expected versitygw or moto, got {wanted!r}")
    if wanted == "versitygw":
        binary = versitygw_binary(cache_dir, log)
        if binary is not None:
            return "versitygw", binary
        log("no Go toolchain to build versitygw: falling back to moto (slower, and it confines no publisher "
            "to uploads/; install Go)")
    if importlib.util.find_spec("moto") is None:
        raise StackError("no S3 server available: install Go (for versitygw) or pip install 'modelreg[stack]' "
                         "(for moto)")
    return "moto", None


def versitygw_binary(cache_dir: Path, log: Callable[[str], None]) -> Path | None:
    home = cache_dir / f"versitygw-{VERSITYGW_VERSION}"
    binary = home / "versitygw"
    if binary.exists():
        return binary
    go = go_toolchain()
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


def go_toolchain() -> str | None:
    """`go` on PATH, else where Go's own installer puts it: a non-interactive shell (CI's) may
    not have read the profile that adds it to PATH, and without it the stack falls back to moto,
    which confines no publisher."""
    found = shutil.which("go")
    if found:
        return found
    standard = Path("/usr/local/go/bin/go")
    return str(standard) if os.access(standard, os.X_OK) else None


def start(kind: str, binary: Path | None, stack_dir: Path, port: int, access_key: str, secret_key: str,
          ready_file: Path, import_root: str) -> int:
    log_file = stack_dir / "logs" / "s3.log"
    if kind == "versitygw":
        assert binary is not None
        data, meta, iam = stack_dir / "s3-data", stack_dir / "s3-meta", stack_dir / "s3-iam"
        data.mkdir(parents=True, exist_ok=True)
        meta.mkdir(parents=True, exist_ok=True)
        iam.mkdir(mode=0o700, parents=True, exist_ok=True)
        return spawn([str(binary), "--access", access_key, "--secret", secret_key,
                      "--port", f"127.0.0.1:{port}", "--keep-alive", "--quiet", "--iam-dir", str(iam),
                      "posix", "--sidecar", str(meta), str(data)], log_file,
                     env={**os.environ, "VGW_DISABLE_OTMP": "true"})
    return spawn([sys.executable, "-m", "shared.stack.s3server", "--port", str(port), "--data",
                  str(stack_dir / "s3"), "--ready-file", str(ready_file)], log_file,
                 env={**os.environ, "PYTHONPATH": import_root})


async def confine_publishers(client: Any, bucket: str, publishers: Sequence[str]) -> None:
    """Put the bucket policy that lets `publishers` write under uploads/ only (replacing the
    bucket's policy: modelreg's buckets have no other)."""
    policy = publisher_bucket_policy(bucket, publishers)
    await client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
