"""`bench` is a package of the distribution (with an extra for its chart), not a folder the CLI
finds by path: `modelreg bench` works from any directory, and says what to install when the
extra is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _modelreg(args: list[str], cwd: Path, code: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    program = f"import sys\n{code}\nfrom services.cli.main import main\nsys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", program], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_bench_is_installed_with_modelreg(tmp_path: Path) -> None:
    found = subprocess.run([sys.executable, "-c", "import bench.run; print(bench.run.__name__)"], cwd=tmp_path,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0 and found.stdout.strip() == "bench.run", found.stderr


def test_bench_help_works_outside_the_checkout(tmp_path: Path) -> None:
    done = _modelreg(["bench", "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--versions" in done.stdout and "--compare-mlflow" in done.stdout


def test_bench_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    # As if matplotlib were not installed: the run stops before measuring anything.
    done = _modelreg(["bench"], cwd=tmp_path, code="sys.modules['matplotlib'] = None")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "modelreg[bench]" in done.stderr
