"""The scale-out phase's wiring and figures, without servers: it is asked for by name, run alone
it starts none of the stack's own services, the runs of one replica count are averaged and
two replicas are compared with one, and the report prints both."""

from __future__ import annotations

import argparse
import io

from rich.console import Console

from bench import config, report
from bench.own_pipeline import OwnPipeline
from bench.scaleout import STEPS, compare
from shared.settings import load_settings


def _parse(*argv: str) -> config.BenchConfig:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_args(parser.parse_args(list(argv)))


def throughput(staging: float, decided: float, cpu: dict[str, float], complete: bool = True) -> dict:
    return {"staging": {"per_second": staging}, "decided": {"per_second": decided, "complete": complete},
            "cpu_seconds": cpu}


ONE = throughput(40.0, 38.0, {"ingest-1": 20.0, "kafka-1": 10.0, "postgres": 10.0})            # 40 ms/version
ONE_AGAIN = throughput(30.0, 28.0, {"ingest-1": 24.0, "kafka-1": 10.0, "postgres": 10.0})      # 44 ms
TWO = throughput(52.5, 49.5, {"ingest-1": 15.0, "ingest-2": 15.0, "kafka-1": 12.0, "postgres": 12.0})  # 54 ms


def test_scaleout_is_asked_for_by_name_and_listed_in_the_help() -> None:
    assert "scaleout" not in _parse().phases
    assert _parse("--only", "scaleout").phases == ("scaleout",)
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    assert "scaleout" in parser.format_help()


def test_run_alone_it_does_not_start_the_stacks_services() -> None:
    assert not _parse("--only", "scaleout").needs_stack_services
    assert not _parse("--only", "soak,scaleout").needs_stack_services
    assert _parse("--only", "throughput,scaleout").needs_stack_services
    assert _parse().needs_stack_services


def test_one_replica_before_and_after_is_averaged_and_two_are_compared_with_it() -> None:
    assert STEPS == (1, 2, 1)
    figures = compare([(1, ONE), (2, TWO), (1, ONE_AGAIN)], versions=1000)
    assert figures["replicas"]["1"] == {"staging_per_second": 35.0, "decided_per_second": 33.0,
                                        "cpu_ms_per_version": 42.0, "complete": True, "runs": 2}
    assert figures["replicas"]["2"] == {"staging_per_second": 52.5, "decided_per_second": 49.5,
                                        "cpu_ms_per_version": 54.0, "complete": True, "runs": 1}
    assert figures["two_over_one"] == {"staging_per_second": 1.5, "decided_per_second": 1.5,
                                       "cpu_ms_per_version": 1.29}


def test_an_incomplete_or_unmeasured_run_shows_rather_than_a_made_up_ratio() -> None:
    figures = compare([(1, ONE), (2, throughput(20.0, 10.0, {}, complete=False))], versions=1000)
    assert figures["replicas"]["2"]["complete"] is False
    assert figures["replicas"]["2"]["cpu_ms_per_version"] is None
    assert figures["two_over_one"]["cpu_ms_per_version"] is None
    assert figures["two_over_one"]["staging_per_second"] == 0.5
    assert compare([(1, ONE)], versions=1000)["two_over_one"]["staging_per_second"] is None  # two never ran


def test_its_pipeline_has_names_of_its_own() -> None:
    own = OwnPipeline.of(load_settings(), 25432, "scaleout", "abc123")
    assert own.env == {"DATABASE_URL": own.settings.dsn, "MODELREG_TOPIC_PREFIX": "bscaleoutabc123.",
                       "S3_BUCKET": "bench-scaleout-abc123"}
    assert own.database == "modelreg_bench_scaleout_abc123" and "/modelreg_bench_scaleout_abc123" in own.settings.dsn
    assert own.settings.group_id("ingest") == "bscaleoutabc123.modelreg-ingest"


def test_the_report_prints_both_replica_counts_and_the_ratio() -> None:
    figures = compare([(1, ONE), (2, TWO), (1, ONE_AGAIN)], versions=1000)
    results = {"run_id": "r1", "started_at": "2026-11-30T14:00:00+00:00",
               "machine": {"cpus": 2, "load_average_at_start": [1.5, 1.0, 1.0]},
               "scaleout": {"brokers": 3, "partitions_per_topic": 6, "versions": 1000, "models": 20,
                            "cluster": "started by the phase", **figures}}
    out = io.StringIO()
    report.print_report(results, Console(file=out, width=200))
    text = out.getvalue()
    assert "scale-out" in text and "3 brokers" in text
    assert "35.0 versions/s" in text and "52.5 versions/s" in text and "1.5x" in text
    assert "42.0 ms" in text and "54.0 ms" in text
