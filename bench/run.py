"""Run the benchmark: prepare the stack, run the chosen phases in order, report.

A failing phase is reported (and makes the exit code 1) without stopping the others.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bench import config as config_module
from bench import (
    large,
    latency,
    lookup,
    pipeline,
    plaintext,
    replayrate,
    report,
    resources,
    scaleout,
    scan,
    soak,
    targets,
    trust,
)
from bench.config import BenchConfig
from bench.context import Context
from bench.tap import wait_caught_up, wait_settled
from bench.target import Target, describe_machine, prepare

MIB = 1024 * 1024
IDLE_SECONDS = 20.0  # long enough for a few of every idle loop's turns (polls, heartbeats, outbox timers)


def log(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def idle_resources(target: Target) -> tuple[dict[str, Any], list[resources.Proc]]:
    """Each part's memory now (before any load), and the parts whose CPU time the throughput
    phase measures."""
    procs = target.procs()
    processes = {}
    for proc in procs:
        pids = proc.pids()
        processes[proc.name] = {"pid": proc.pid, "idle_mib": round(proc.memory_bytes() / MIB, 1),
                                "note": f"PSS summed over {len(pids)} processes" if proc.with_children else None}
        if not proc.with_children:
            # RSS counts the shared libraries' pages in every process that maps them; PSS
            # divides them among those processes.
            processes[proc.name]["idle_pss_mib"] = round((resources.pss_bytes(proc.pid) or 0) / MIB, 1)
    return {"processes": processes, "s3_server": target.s3_server}, procs


async def run_phases(ctx: Context, results: dict[str, Any]) -> None:
    config = ctx.config
    errors: dict[str, str] = results["errors"]

    async def phase(name: str, body: Any) -> Any:
        log(f"--- {name}")
        try:
            results[name] = await body
        except Exception as exc:  # noqa: BLE001 - reported, and the other phases still run
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {errors[name]}\n{traceback.format_exc()}")

    await ctx.target.wait_started(log)
    # The plaintext comparison needs the secured run's CPU, which the resources snapshot measures.
    measure_cpu = config.has("resources") or config.has("plaintext")
    idle, procs = idle_resources(ctx.target) if measure_cpu else (None, None)
    needs_pipeline = config.has("throughput") or config.has("latency")
    if needs_pipeline:
        left = await wait_caught_up(ctx.settings, resources.SERVICES, timeout=60)
        if left > 0:
            log(f"the services still have {left:,} events to consume from before this run")
        await phase("warm-up", pipeline.warm_up(ctx, "w", label="warm-up"))
        results.pop("warm-up", None)
    idle_rates = None
    if measure_cpu and procs and "warm-up" not in errors:
        # Idle is with nothing to do: not while archival still moves the warm-up's superseded
        # versions to cold storage (its first move also loads aioboto3, a few % of 20 s).
        if (left := await wait_settled(ctx.settings, resources.SERVICES, timeout=60)) > 0:
            log(f"the services still have {left:,} events or artifact moves to finish: idle CPU includes them")
        log(f"--- idle CPU ({IDLE_SECONDS:g} s with nothing to do)")
        idle_rates = await resources.idle_cpu(procs, IDLE_SECONDS)
    if config.has("throughput") and "warm-up" not in errors:
        await wait_caught_up(ctx.settings, resources.SERVICES, timeout=60)
        await phase("throughput", pipeline.run(ctx, procs, idle=idle_rates))
    if config.has("latency") and "warm-up" not in errors:
        await wait_caught_up(ctx.settings, resources.SERVICES, timeout=120)
        await phase("latency", latency.run(ctx))
    if config.has("lookup"):
        await phase("lookup", lookup.run(ctx))
    if config.has("large"):
        await phase("large", large.run(ctx))
    if config.has("replay"):
        await phase("replay", replayrate.run(ctx))
    if config.has("trust"):
        await phase("trust", trust.run(ctx, results))
    if config.has("scan"):
        await phase("scan", scan.run(ctx, results))
    if config.has("plaintext") and "throughput" in results:
        await phase("plaintext", plaintext.run(ctx, results))
    if config.has("soak"):
        await phase("soak", soak.run(ctx))
    if config.has("scaleout"):
        await phase("scaleout", scaleout.run(ctx, results))
    if idle is not None and config.has("resources"):
        for proc in procs or ():
            if not proc.with_children and proc.name in idle["processes"]:
                idle["processes"][proc.name]["after_mib"] = round((resources.rss_bytes(proc.pid) or 0) / MIB, 1)
        cpu = (results.get("throughput") or {}).get("cpu_seconds") or {}
        versions = config.versions if cpu else None
        for name, proc in idle["processes"].items():
            if idle_rates and name in idle_rates:
                proc["idle_cpu_percent_of_a_core"] = round(idle_rates[name] * 100, 2)
            if name in cpu and versions:
                proc["cpu_seconds"] = cpu[name]
                proc["cpu_seconds_per_1000_versions"] = round(cpu[name] / versions * 1000, 3)
        idle["per_versions"] = versions
        results["resources"] = idle
    if config.compare_mlflow:
        from bench import mlflow_compare

        await phase("mlflow", mlflow_compare.run(ctx))


def run(config: BenchConfig) -> dict[str, Any]:
    """Everything: returns the results (also printed and written under `config.out`)."""
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    run_id = uuid.uuid4().hex[:6]
    machine = describe_machine()
    target = prepare(log, start_services=config.needs_stack_services)
    results: dict[str, Any] = {
        "run_id": run_id, "started_at": started.isoformat(timespec="seconds"), "machine": machine,
        "config": config.as_dict(),
        "stack": {"dir": str(target.stack.dir), "s3_server": target.s3_server,
                  "kafka": target.settings.kafka_bootstrap_servers,
                  "services": dict(target.services), "services_started_by_bench": list(target.started)},
        "errors": {},
        "notes": ["figures are from one run on this machine; the benchmark shares its CPUs with what it measures",
                  "the MLflow figures marked as the issue's reference were not measured here"],
    }
    ctx = Context(config=config, target=target, run_id=run_id, log=log)
    began = time.monotonic()
    try:
        asyncio.run(run_phases(ctx, results))
    finally:
        target.close(log)
    results["seconds"] = round(time.monotonic() - began, 1)
    results["targets"] = targets.judge_all(results)
    results["mlflow_comparison"] = targets.comparisons(results)
    json_path = config.out / f"{stamp}.json"
    png_path = config.out / f"{stamp}.png"
    results["files"] = {"json": str(json_path), "png": str(png_path)}
    try:
        report.draw_chart(results, png_path)
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
        results["errors"]["chart"] = f"{type(exc).__name__}: {exc}"
        results["files"]["png"] = None
    report.write_json(results, json_path)
    report.print_report(results)
    print(f"results: {json_path}" + (f" and {png_path}" if results["files"]["png"] else ""))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="modelreg's benchmark")
    config_module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_module.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    results = run(config)
    return 1 if results["errors"] else 0
