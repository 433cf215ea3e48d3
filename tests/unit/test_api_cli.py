"""The API's commands (`modelreg token ...`, `models`, `versions`, `show`, `explain`,
`policy dry-run`, `run api`): mistakes get one line and exit 2, before any server is needed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def modelreg(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.mark.parametrize("args", [
    ("token", "create", "--role", "root", "--name", "alice"),
    ("token", "create", "--role", "reader", "--name", "bad name"),
    ("token", "create", "--role", "reader"),
    ("token",),
    ("versions", "Bad_Name"),
    ("show", "model", "0"),
    ("show", "model", "v1"),
    ("explain", "model"),
    ("models", "--stage", "heaven"),
    ("models", "--tag", "novalue"),
    ("models", "--limit", "0"),
    ("policy", "dry-run"),
])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = modelreg(*args)
    assert result.returncode == 2, result
    assert "usage: modelreg" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_new_policy_names_its_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "new.yaml"
    policy.write_text("rules:\n  - match: '*'\n    thresholds:\n      auc: high\n")
    result = modelreg("policy", "dry-run", str(policy))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{policy}:4:" in result.stderr


def test_a_missing_policy_file_is_one_line() -> None:
    result = modelreg("policy", "dry-run", "/no/such/policy.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "/no/such/policy.yaml: cannot read the policy file" in result.stderr


@pytest.mark.parametrize("variable,value", [("MODELREG_API_PORT", "99999"), ("MODELREG_API_OPEN_READS", "maybe"),
                                            ("MODELREG_API_PRESIGN_SECONDS", "0")])
def test_run_api_with_a_bad_setting_names_it(variable: str, value: str) -> None:
    result = modelreg("run", "api", **{variable: value})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"modelreg: error: {variable}: " in result.stderr


def test_people_commands_without_a_database_fail_in_one_line() -> None:
    result = modelreg("models", DATABASE_URL="postgresql://nobody:x@127.0.0.1:1/none")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/none" in result.stderr
