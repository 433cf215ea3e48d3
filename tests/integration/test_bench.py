"""`modelreg bench` at a tiny size, through the command itself, against the local stack with the
services as separate processes (started by the benchmark when they are not running).

Only that every figure is produced (present, positive, judged against its target), that the
large artifact's objects are gone afterwards, and that the JSON and the PNG are written: no
timing is asserted.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Endpoints

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value) and value > 0


def test_bench_smoke(endpoints: Endpoints, tmp_path: Path) -> None:
    # `endpoints` starts the local stack when nothing runs (and stops it in CI); the benchmark
    # finds it, and starts whatever service is missing itself.
    out = tmp_path / "results"
    command = [sys.executable, "-m", "services.cli.main", "bench",
               "--versions", "20", "--models", "4", "--rate", "5", "--duration", "5",
               "--lookup-versions", "1000", "--lookup-models", "50", "--lookup-requests", "300",
               "--large-mib", "5", "--replay-max-events", "20000", "--timeout", "120",
               "--api-url", f"http://127.0.0.1:{_free_port()}", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"

    written = sorted(out.glob("*.json"))
    assert len(written) == 1, list(out.iterdir())
    results = json.loads(written[0].read_text())
    png = written[0].with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["errors"] == {}

    throughput = results["throughput"]
    for point in ("ingested", "validated", "staging", "decided"):
        assert throughput[point]["complete"], point
        assert _positive(throughput[point]["per_second"]), point
    assert throughput["promoted_to_production"] + throughput["held"] == 20

    latency = results["latency"]
    assert latency["completed"] == latency["versions"] == 25
    for quantile in ("p50", "p95", "p99"):
        assert _positive(latency["e2e_ms"][quantile])
    assert len(latency["hops_ms"]) == 6
    for hop, summary in latency["hops_ms"].items():
        assert summary["count"] == 25 and _positive(summary["p99"]), hop

    lookup = results["lookup"]
    assert lookup["seeded"] is True and lookup["seeded_versions"] == 1000 and not lookup["kept"]
    for series in ("first_lookup", "lookup_200", "revalidate_304"):
        assert lookup[series]["errors"] == {}, series
        assert _positive(lookup[series]["p50"]) and _positive(lookup[series]["p99"]), series
        assert _positive(lookup[series]["requests_per_second"]), series

    large = results["large"]
    assert large["bytes"] == 5 * 1024 * 1024
    assert _positive(large["seconds"]) and _positive(large["mb_per_second"]) and _positive(large["rss_peak_mib"])
    # the sampler read the ingest process (a baseline), and growth is what it measured
    assert _positive(large["rss_baseline_mib"]) and large["rss_peak_mib"] >= large["rss_baseline_mib"]
    assert abs(large["rss_growth_mib"] - (large["rss_peak_mib"] - large["rss_baseline_mib"])) <= 0.11
    assert large["objects_deleted"] is True and large["objects_left"] == [], large  # checked with HEAD

    replay = results["replay"]
    assert _positive(replay["events"]) and _positive(replay["events_per_second"])

    signed = results["trust"]
    assert signed["events_signed_per_version"] == 9 and signed["verifications_per_version"] >= 9
    assert _positive(signed["sign_us_per_event"]) and _positive(signed["verify_us_per_event"])
    assert _positive(signed["share_of_pipeline_cpu_percent"])

    scanned = results["scan"]
    assert _positive(scanned["throughput_artifact"]["cpu_ms"]) and _positive(scanned["share_of_pipeline_cpu_percent"])
    assert _positive(scanned["sklearn_joblib"]["cpu_ms"])  # the test extra installs scikit-learn

    assert "plaintext" not in results  # asked for by name only

    processes = results["resources"]["processes"]
    names = ("ingest", "validation", "promotion", "archival", "audit", "kafka", "postgres", "s3")
    for name in names:
        assert _positive(processes[name]["idle_mib"]), name
        # CPU is read in clock ticks (10 ms): a light process may show 0 for 20 versions, but
        # each figure is its own measurement scaled to 1,000 versions, and together they are work
        cpu, per_1000 = processes[name]["cpu_seconds"], processes[name]["cpu_seconds_per_1000_versions"]
        assert cpu >= 0 and per_1000 == round(cpu / 20 * 1000, 3), (name, processes[name])
        assert processes[name]["idle_cpu_percent_of_a_core"] >= 0, (name, processes[name])
    assert sum(processes[name]["cpu_seconds"] for name in names) > 0

    judged = {row["figure"]: row for row in results["targets"]}
    assert len(judged) == 18, judged  # 8 figures, and idle RSS and CPU of each of the 5 services
    for figure, row in judged.items():  # every figure measured, and judged against its target
        op, threshold = row["target"].split()
        value = row["value"]
        assert isinstance(value, (int, float)) and math.isfinite(value), (figure, row)
        expected = {">=": value >= float(threshold), "<=": value <= float(threshold),
                    "<": value < float(threshold)}[op]
        assert row["met"] is expected and (row["verdict"] == "met") is expected, (figure, row)
    assert {row["mlflow_source"] for row in results["mlflow_comparison"]} == {"issue's reference, not measured here"}
    assert "versions/s to staging" in done.stdout  # the table was printed
