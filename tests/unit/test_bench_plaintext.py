"""The security comparison of `modelreg bench`: two throughput results side by side."""

from __future__ import annotations

from bench.pipeline import cpu_ms_per_version as per_version
from bench.plaintext import compare
from bench.resources import Snapshot, cpu_rates


def throughput(staging: float, decided: float, cpu: dict[str, float]) -> dict:
    return {"staging": {"per_second": staging}, "decided": {"per_second": decided}, "cpu_seconds": cpu}


SECURED = throughput(50.0, 48.0, {"ingest": 10.0, "kafka": 6.0, "postgres": 4.0})   # 20 s for 1,000: 20 ms
PLAIN = throughput(100.0, 95.0, {"ingest": 8.0, "kafka": 2.0, "postgres": 4.0})     # 14 ms


def test_cpu_per_version_sums_every_measured_process() -> None:
    assert per_version(SECURED, 1000) == 20.0
    assert per_version({"staging": {}}, 1000) is None  # no CPU measured: no figure, never zero
    assert per_version(SECURED, 0) is None


def test_the_difference_is_what_tls_and_sasl_cost() -> None:
    figures = compare(SECURED, PLAIN, 1000, signatures_ms=1.5)
    assert figures["secured"] == {"staging_per_second": 50.0, "decided_per_second": 48.0, "cpu_ms_per_version": 20.0,
                                  "runs": 1}
    assert figures["plaintext"]["cpu_ms_per_version"] == 14.0
    assert figures["tls_sasl_cpu_ms_per_version"] == 6.0
    assert figures["security_share_of_cpu_percent"] == 30.0
    assert figures["staging_throughput_ratio"] == 0.5
    assert figures["signatures_cpu_ms_per_version"] == 1.5


def test_a_run_without_cpu_figures_gives_no_cost_rather_than_a_made_up_one() -> None:
    figures = compare(SECURED, {"staging": {"per_second": 90.0}}, 1000, signatures_ms=None)
    assert "tls_sasl_cpu_ms_per_version" not in figures and figures["plaintext"]["cpu_ms_per_version"] is None
    assert figures["staging_throughput_ratio"] == round(50 / 90, 2)


def test_idle_burn_over_the_run_is_not_charged_to_the_versions() -> None:
    # 20 CPU-s over 40 s of wall time, while the three parts burn 0.1 CPU-s/s together idle: 4 s idle.
    slow = {**SECURED, "cpu_wall_seconds": 40.0, "idle_cpu_per_second": {"ingest": 0.05, "kafka": 0.05}}
    assert per_version(slow, 1000) == 16.0
    # Only the measured processes' idle rates count, and the work never goes below zero.
    stray = {**SECURED, "cpu_wall_seconds": 40.0, "idle_cpu_per_second": {"webhooks": 5.0}}
    assert per_version(stray, 1000) == 20.0
    assert per_version({**SECURED, "cpu_wall_seconds": 1e6, "idle_cpu_per_second": {"ingest": 1.0}}, 1000) == 0.0


def test_the_secured_runs_before_and_after_are_averaged() -> None:
    later = throughput(30.0, 28.0, {"ingest": 14.0, "kafka": 6.0, "postgres": 4.0})  # 24 ms
    figures = compare(SECURED, PLAIN, 1000, signatures_ms=None, secured_again=later)
    assert figures["secured"] == {"staging_per_second": 40.0, "decided_per_second": 38.0, "cpu_ms_per_version": 22.0,
                                  "runs": 2}
    assert figures["tls_sasl_cpu_ms_per_version"] == 8.0
    assert figures["staging_throughput_ratio"] == 0.4


def test_cpu_rates_are_cpu_seconds_per_wall_second() -> None:
    before = Snapshot(100.0, {"ingest": 2.0, "kafka": 10.0})
    after = Snapshot(120.0, {"ingest": 2.1, "kafka": 12.0})
    assert cpu_rates(before, after) == {"ingest": 0.005, "kafka": 0.1}
    assert cpu_rates(before, before) == {}  # no time passed: no rate, rather than a division by zero
