"""The security comparison of `modelreg bench`: two throughput results side by side."""

from __future__ import annotations

from bench.plaintext import compare, per_version


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
    assert figures["secured"] == {"staging_per_second": 50.0, "decided_per_second": 48.0, "cpu_ms_per_version": 20.0}
    assert figures["plaintext"]["cpu_ms_per_version"] == 14.0
    assert figures["tls_sasl_cpu_ms_per_version"] == 6.0
    assert figures["security_share_of_cpu_percent"] == 30.0
    assert figures["staging_throughput_ratio"] == 0.5
    assert figures["signatures_cpu_ms_per_version"] == 1.5


def test_a_run_without_cpu_figures_gives_no_cost_rather_than_a_made_up_one() -> None:
    figures = compare(SECURED, {"staging": {"per_second": 90.0}}, 1000, signatures_ms=None)
    assert "tls_sasl_cpu_ms_per_version" not in figures and figures["plaintext"]["cpu_ms_per_version"] is None
    assert figures["staging_throughput_ratio"] == round(50 / 90, 2)
