"""The `modelreg` command: a person's mistake gets one clear line and a non-zero exit code,
never a traceback. (No servers: every case fails before one is needed.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def modelreg(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.mark.parametrize("args,env,message", [
    (("run", "ingest"), {"KAFKA_BOOTSTRAP_SERVERS": "no-port"}, "KAFKA_BOOTSTRAP_SERVERS: 'no-port' is not host:port"),
    (("migrate",), {"DATABASE_URL": "mysql://x"}, "DATABASE_URL: expected postgresql://"),
    (("run", "ingest"), {"MODELREG_POLICY_FILE": "/nonexistent/policy.yaml"}, "/nonexistent/policy.yaml"),
    (("register", "Bad Name", "--artifact", __file__), {}, "name: String should match pattern"),
    (("register", "ok-name", "--artifact", "/no/such/file"), {}, "--artifact '/no/such/file': no such file"),
    (("register", "ok-name", "--artifact", __file__, "--metric", "auc"), {}, "--metric expects KEY=VALUE"),
    (("evaluate", "ok-name", "1", "--suite", "s", "--metric", "auc=high"), {}, "the value must be a number"),
    (("evaluate", "ok-name", "1", "--suite", "s", "--metric", "auc=inf"), {}, "the value must be finite"),
    (("evaluate", "ok-name", "0", "--suite", "s", "--metric", "auc=1"), {}, "version: Input should be greater"),
])
def test_mistakes_get_one_clear_line(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    result = modelreg(*args, **env)
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("args", [("stack", "up", "--kafka-port", "99999"), ("promote", "m", "1", "--to", "heaven",
                                  "--actor", "a", "--reason", "r"), ("run", "nonsense"), ()])
def test_usage_errors_exit_2_with_usage(args: tuple[str, ...]) -> None:
    result = modelreg(*args)
    assert result.returncode == 2
    assert "usage: modelreg" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_policy_names_the_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - match: '*'\n    thresholds:\n      auc: high\n")
    result = modelreg("run", "promotion", MODELREG_POLICY_FILE=str(policy))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{policy}:4:" in result.stderr
