"""PostgreSQL for the local stack: the machine's server binaries, initdb'd into the stack.

PostgreSQL refuses to run as root; started as root, the server runs as the `postgres` user
(Debian's package creates it) or a `modelreg` system user created for it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from shared.stack.proc import StackError

USER = "modelreg"
PASSWORD = "modelreg"  # a local development stack on 127.0.0.1, not a secret
DATABASE = "modelreg"


def bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres live: PATH, pg_config, then Debian's layout."""
    override = os.environ.get("MODELREG_PG_BIN")
    candidates = [Path(override)] if override else []
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out:
            candidates.append(Path(out))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates.extend(Path(p) for p in reversed(debian))
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise StackError("PostgreSQL server binaries (initdb, pg_ctl) were not found: install Debian's "
                     "postgresql package (apt-get install postgresql), set MODELREG_PG_BIN, or point "
                     "DATABASE_URL at a running server")


def run_as() -> str | None:
    """The user the server must run as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                   check=True, capture_output=True)
    return USER


def data_dir(stack_dir: Path, user: str | None) -> Path:
    """The cluster's directory: in the stack, unless the server's user cannot reach it."""
    preferred = stack_dir / "postgres"
    if user is None or _reachable(stack_dir, user):
        return preferred
    digest = hashlib.sha256(str(stack_dir.resolve()).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"modelreg-postgres-{digest}"


def _reachable(directory: Path, user: str) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["test", "-x", str(directory)], user=user).returncode == 0


def _prepare_owned(path: Path, user: str | None) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        for root, dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def init_cluster(pgdata: Path, user: str | None) -> None:
    if (pgdata / "PG_VERSION").exists():
        return
    binaries = bin_dir()
    _prepare_owned(pgdata, user)
    password_file = pgdata.parent / f".{pgdata.name}.pw"
    password_file.write_text(PASSWORD + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(password_file, entry.pw_uid, entry.pw_gid)
    try:
        result = subprocess.run(
            [str(binaries / "initdb"), "-D", str(pgdata), "-U", USER, "--auth=scram-sha-256",
             f"--pwfile={password_file}", "-E", "UTF8", "--locale=C"],
            capture_output=True, text=True, user=user)
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise StackError(f"initdb failed:\n{(result.stdout + result.stderr)[-2000:]}")


def start(pgdata: Path, log_file: Path, port: int, user: str | None) -> None:
    binaries = bin_dir()
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' "
               "-c max_connections=300 -c shared_buffers=256MB -c log_min_messages=warning "
               "-c log_min_error_statement=panic")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(log_file, entry.pw_uid, entry.pw_gid)
    result = subprocess.run(
        [str(binaries / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(pgdata), "-l", str(log_file),
         "-o", options], capture_output=True, text=True, user=user, start_new_session=True)
    if result.returncode != 0:
        raise StackError(f"PostgreSQL did not start:\n{(result.stdout + result.stderr)[-1500:]}")


def stop(pgdata: Path, user: str | None) -> None:
    if not (pgdata / "postmaster.pid").exists():
        return
    subprocess.run([str(bin_dir() / "pg_ctl"), "stop", "-w", "-t", "60", "-m", "fast", "-D", str(pgdata)],
                   capture_output=True, text=True, user=user)


def running(pgdata: Path, user: str | None) -> bool:
    if not (pgdata / "postmaster.pid").exists():
        return False
    result = subprocess.run([str(bin_dir() / "pg_ctl"), "status", "-D", str(pgdata)],
                            capture_output=True, text=True, user=user)
    return result.returncode == 0


def dsn(port: int, database: str = DATABASE) -> str:
    return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{database}"
