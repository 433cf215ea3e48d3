"""The soak phase's pure parts: its options, what it expects of every version, and how the
fleet reads a service's readiness and lag."""

from __future__ import annotations

import argparse

import pytest

from bench import config
from bench.fleet import Readiness, gauge_sum
from bench.soak import SoakPlan, expected


def _parse(*argv: str) -> config.BenchConfig:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_args(parser.parse_args(list(argv)))


def test_the_soak_is_asked_for_by_name_and_its_length_is_an_option() -> None:
    assert "soak" not in _parse().phases
    chosen = _parse("--only", "soak", "--soak-seconds", "120")
    assert chosen.phases == ("soak",) and chosen.soak_seconds == 120
    assert _parse().soak_seconds == 600


def test_a_soak_of_no_time_is_refused() -> None:
    with pytest.raises(SystemExit):
        _parse("--only", "soak", "--soak-seconds", "0")


def test_every_fifth_version_of_a_model_is_expected_to_stay_in_staging() -> None:
    want = expected("soak-x-", {"soak-x-000": 11, "soak-x-001": 4}, SoakPlan())
    assert want.held == {("soak-x-000", 5), ("soak-x-000", 10)}
    assert want.total == 15 and want.promoted == 13


def test_the_lag_gauge_is_summed_over_its_partitions_only() -> None:
    text = """# HELP modelreg_consumer_lag Records not yet consumed, per partition
# TYPE modelreg_consumer_lag gauge
modelreg_consumer_lag{partition="0",service="ingest",topic="model.registered"} 3.0
modelreg_consumer_lag{partition="1",service="ingest",topic="model.registered"} 4.0
modelreg_consumer_lag_other{partition="1"} 100.0
modelreg_outbox_backlog{service="ingest"} 9.0
"""
    assert gauge_sum(text, "modelreg_consumer_lag") == 7
    assert gauge_sum("", "modelreg_consumer_lag") == 0


def test_unready_for_a_dependency_means_503_naming_it() -> None:
    down = Readiness(503, {"postgres": "ConnectionRefusedError", "kafka": "ok", "s3": "ok"})
    assert down.down("postgres") and not down.down("s3")
    assert not Readiness(None, {}).down("postgres")  # no answer says nothing about PostgreSQL
    assert not Readiness(200, {"postgres": "ok"}).down("postgres")
