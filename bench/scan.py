"""What checking artifacts costs: CPU per version for validation's scan, on the code the
validation service runs (`services.validation.scan`), spooled as the service spools it (in
memory up to `SCAN_IN_MEMORY_BYTES`, then to a temporary file).

Two artifacts: the one every throughput version carries (a 1 KiB safetensors file, so the
share below is of the same pipeline the throughput phase measured), and a scikit-learn model
saved the way its users save one (`joblib.dump(..., compress=3)`, a zlib stream around a
pickle, walked opcode by opcode). The manifest costs nothing extra for a single file (its
digest is the sha256 ingest computed already) and is left out. The cost is set beside the CPU
the throughput phase measured per version, when it ran, as the trust phase does for
signatures.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from bench.artifacts import safetensors_prefix
from bench.context import SMALL_ARTIFACT_BYTES
from bench.pipeline import cpu_ms_per_version
from services.validation.logic import needs_scan
from services.validation.scan import SCAN_IN_MEMORY_BYTES, scan_stream


def _cpu_ms(rounds: int, work: Callable[[], None]) -> float:
    started = time.process_time()
    for _ in range(rounds):
        work()
    return (time.process_time() - started) / rounds * 1e3


def _spool_and_scan(body: bytes, fmt: str) -> Callable[[], None]:
    """What validation does with a stored object that needs the scan: decide from its first
    bytes, spool it, scan the spool, let it go."""
    def work() -> None:
        if not needs_scan(fmt, body[:64]):
            raise AssertionError(f"a {fmt} artifact must be scanned")
        with tempfile.SpooledTemporaryFile(SCAN_IN_MEMORY_BYTES, prefix="modelreg-bench-scan-") as spool:
            spool.write(body)
            spool.seek(0)
            scan = scan_stream(cast(BinaryIO, spool), declared_format=fmt, label=f"bench.{fmt}",
                               stored_bytes=len(body))
        if scan.findings:
            raise AssertionError(f"the benchmark's {fmt} artifact was refused: {scan.findings}")
    return work


def _sklearn_joblib() -> bytes | None:
    try:
        import joblib
        from sklearn.datasets import load_iris
        from sklearn.ensemble import RandomForestClassifier
    except ImportError:
        return None
    features, labels = load_iris(return_X_y=True)
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(features, labels)
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=3)
    return buffer.getvalue()


def measure(rounds: int = 300) -> dict[str, Any]:
    small = safetensors_prefix(SMALL_ARTIFACT_BYTES)
    small += os.urandom(SMALL_ARTIFACT_BYTES - len(small))
    figures: dict[str, Any] = {
        "throughput_artifact": {"format": "safetensors", "bytes": len(small),
                                "cpu_ms": round(_cpu_ms(rounds, _spool_and_scan(small, "safetensors")), 3)},
    }
    model = _sklearn_joblib()
    if model is None:
        figures["sklearn_joblib"] = {"not_measured": "scikit-learn and joblib are not installed"}
    else:
        cpu_ms = _cpu_ms(max(rounds // 30, 5), _spool_and_scan(model, "joblib"))
        figures["sklearn_joblib"] = {"format": "joblib", "bytes": len(model), "model": "RandomForest, 20 trees, zlib 3",
                                     "cpu_ms": round(cpu_ms, 3)}
    return figures


async def run(ctx: Any, results: dict[str, Any]) -> dict[str, Any]:
    figures = measure()
    pipeline_ms = cpu_ms_per_version(results.get("throughput") or {}, ctx.config.versions)
    scan_ms = figures["throughput_artifact"]["cpu_ms"]
    if pipeline_ms:
        figures["pipeline_cpu_ms_per_version"] = pipeline_ms
        figures["share_of_pipeline_cpu_percent"] = round(scan_ms / pipeline_ms * 100, 1)
    joblib_ms = figures["sklearn_joblib"].get("cpu_ms")
    ctx.log(f"scan: {scan_ms} CPU ms for the throughput's safetensors artifact"
            + (f" ({figures['share_of_pipeline_cpu_percent']}% of the pipeline's per version)"
               if "share_of_pipeline_cpu_percent" in figures else "")
            + (f", {joblib_ms} ms for a joblib-compressed scikit-learn forest" if joblib_ms is not None else ""))
    return figures
