"""The benchmark registers real models: its safetensors files pass validation's scan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.artifacts import safetensors_prefix
from services.validation.scan import scan_file


@pytest.mark.parametrize("size", [128, 1024, 99_999, 5 * 1024 * 1024])
def test_benchmark_artifacts_are_valid_safetensors(tmp_path: Path, size: int) -> None:
    prefix = safetensors_prefix(size)
    path = tmp_path / "model.safetensors"
    path.write_bytes(prefix + os.urandom(size - len(prefix)))
    assert path.stat().st_size == size
    scan = scan_file(path, declared_format="safetensors")
    assert not scan.findings, scan.findings


def test_a_truncated_one_is_not() -> None:
    with pytest.raises(ValueError, match="too few"):
        safetensors_prefix(64)
