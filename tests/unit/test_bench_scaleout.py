"""The scale-out phase's wiring and figures, without servers: it is asked for by name, run alone
it starts none of the stack's own services, the runs of one replica count are averaged and
two replicas are compared with one, and the report prints both."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from bench import config, report, scaleout
from bench.context import Context
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



# -- the steps' loop, on fakes of the cluster, the pipeline, the fleets and each step ------------

class _Stack:
    ports = types.SimpleNamespace(postgres=1)

    def env(self, principal: str = "admin") -> dict[str, str]:
        return {}

    def kafka_env(self, principal: str) -> dict[str, str]:
        return {}

    def signing_key_file(self, service: str) -> str:
        return f"/keys/{service}"


class _Pipeline:
    settings = load_settings()
    env: dict[str, str] = {}

    def __init__(self) -> None:
        self.removed = False

    async def create_database(self) -> None: ...

    async def prepare(self) -> None: ...

    async def remove(self, log: object) -> None:
        self.removed = True


class _Fleet:
    running = 0

    def __init__(self, env: object, logs: object) -> None: ...

    def start_all(self) -> None:
        _Fleet.running += 1

    def stop(self) -> None:
        _Fleet.running -= 1


def _run_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failing_step: int) -> tuple[dict, dict, _Pipeline]:
    """The phase's run() with step `failing_step` raising; returns its figures, the run's results
    and the pipeline (to see it removed)."""
    pipeline = _Pipeline()

    @contextlib.asynccontextmanager
    async def cluster(ctx: Context) -> AsyncIterator[tuple[_Stack, str]]:
        yield _Stack(), "a fake cluster"

    async def step(ctx: Context, stack: object, fleets: list, step: int) -> dict:
        if step == failing_step:
            raise RuntimeError(f"step {step} broke")
        return {"replicas": len(fleets), **(ONE if len(fleets) == 1 else TWO)}

    monkeypatch.setattr(scaleout, "cluster", cluster)
    monkeypatch.setattr(scaleout, "_step", step)
    monkeypatch.setattr(scaleout, "Fleet", _Fleet)
    monkeypatch.setattr(scaleout.OwnPipeline, "of", classmethod(lambda cls, *args: pipeline))
    ctx = Context(config=config.BenchConfig(versions=1000), run_id="r1", log=lambda line: None,
                  target=types.SimpleNamespace(stack=types.SimpleNamespace(dir=tmp_path)))  # type: ignore[arg-type]
    results: dict = {"errors": {}}
    try:
        figures = asyncio.run(scaleout.run(ctx, results))
    finally:
        assert _Fleet.running == 0 and pipeline.removed  # whatever happened, all it started is stopped
    return figures, results, pipeline


def test_a_step_that_fails_after_others_reports_what_was_measured_and_the_error(monkeypatch, tmp_path) -> None:
    figures, results, _ = _run_steps(monkeypatch, tmp_path, failing_step=3)
    assert results["errors"]["scaleout"] == "step 3 (1 replica(s)): RuntimeError: step 3 broke"
    assert figures["order"] == [1, 2] and figures["replicas"]["1"]["runs"] == 1
    assert figures["two_over_one"]["staging_per_second"] == round(52.5 / 40.0, 2)


def test_a_first_step_that_fails_fails_the_phase(monkeypatch, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="step 1 broke"):
        _run_steps(monkeypatch, tmp_path, failing_step=1)
