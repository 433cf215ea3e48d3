"""Scale-out: the throughput load on a three-broker Kafka cluster with 1, then 2, then again 1
process of every pipeline service (the second process of a service in the same consumer group,
so the group's RangeAssignor splits each topic's partitions between the two).

The cluster is `$MODELREG_SCALEOUT_STACK_DIR`'s stack (started with `modelreg stack up
--brokers 3`), else the benchmark's own stack if it has three brokers, else one this phase
starts in a temporary directory on free ports (Kafka, PostgreSQL, S3) and removes afterwards.
On it the phase runs a pipeline of its own (bench/own_pipeline.py: database, topic prefix,
bucket), so no other service joins its consumer groups.

Each step warms the processes up with real load (new processes and a rebalance start cold),
measures what every process burns idle, then pushes the throughput load (bench/pipeline.py)
and counts the CPU of every service process, every broker, PostgreSQL and S3. The one-replica
run comes before and after the two-replica one (A-B-A) and its figures are the mean of both,
so a neighbour's load that rises or falls evenly over the phase does not pass for scaling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bench import pipeline, resources
from bench.context import Context
from bench.fleet import Fleet, free_port, wait_all_ready, wait_until
from bench.own_pipeline import OwnPipeline
from bench.pipeline import cpu_ms_per_version, pipeline_rate
from bench.stats import mean_of_known
from bench.tap import wait_caught_up
from bench.target import Target
from services.cli.up import service_env
from shared.broker import make_admin
from shared.settings import Settings, load_settings
from shared.stack.launcher import LocalStack, Ports
from shared.stack.proc import port_open

BROKERS = 3
STEPS = (1, 2, 1)              # replicas of every service, in the order measured (A-B-A)
IDLE_SECONDS = 15.0
STACK_DIR_ENV = "MODELREG_SCALEOUT_STACK_DIR"
FIGURES = ("staging_per_second", "decided_per_second", "cpu_ms_per_version")


def compare(runs: Sequence[tuple[int, dict[str, Any]]], versions: int) -> dict[str, Any]:
    """Throughput results by replica count (several runs of one count: their mean), and two
    replicas' figures over one replica's (pure: unit-tested)."""
    by_replicas: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for replicas, result in runs:
        by_replicas[replicas].append(result)
    figures: dict[str, Any] = {
        str(replicas): {"staging_per_second": mean_of_known([pipeline_rate(r, "staging") for r in results]),
                        "decided_per_second": mean_of_known([pipeline_rate(r, "decided") for r in results]),
                        "cpu_ms_per_version": mean_of_known([cpu_ms_per_version(r, versions) for r in results]),
                        "complete": all((r.get("decided") or {}).get("complete") for r in results),
                        "runs": len(results)}
        for replicas, results in sorted(by_replicas.items())}
    one, two = figures.get("1"), figures.get("2")
    ratios: dict[str, float | None] = {}
    for figure in FIGURES:
        base, scaled = (one or {}).get(figure), (two or {}).get(figure)
        ratios[figure] = round(scaled / base, 2) if base and scaled is not None else None
    return {"replicas": figures, "two_over_one": ratios}


def free_port_block(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive ports nothing listens on (a Kafka cluster's client and
    controller ports are consecutive)."""
    for _ in range(attempts):
        base = free_port()
        if base + count < 65536 and not any(port_open(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports for a Kafka cluster")


@contextlib.asynccontextmanager
async def cluster(ctx: Context) -> AsyncIterator[tuple[LocalStack, str]]:
    """A running stack with three brokers, and where it came from; one started here is removed
    on the way out."""
    given = os.environ.get(STACK_DIR_ENV)
    if given:
        stack = LocalStack(Path(given))
        if stack.state.kafka_brokers < BROKERS or not stack.serving():
            raise RuntimeError(f"${STACK_DIR_ENV}={given}: no running stack of {BROKERS} brokers there (start one "
                               f"with MODELREG_STACK_DIR={given} modelreg stack up --brokers {BROKERS} --infra-only)")
        yield stack, f"${STACK_DIR_ENV} ({given})"
        return
    if ctx.target.stack.state.kafka_brokers >= BROKERS:
        yield ctx.target.stack, f"the benchmark's stack ({ctx.target.stack.dir})"
        return
    home = Path(tempfile.mkdtemp(prefix=f"modelreg-scaleout-{ctx.run_id}-"))
    home.chmod(0o755)  # run as root, the stack runs PostgreSQL as its own user, which writes its data and log here
    stack = LocalStack(home)
    ports = Ports(kafka=free_port_block(2 * BROKERS), postgres=free_port(), s3=free_port())
    ctx.log(f"scaleout: starting a stack of {BROKERS} brokers in {home} (Kafka {ports.kafka}-"
            f"{ports.kafka + BROKERS - 1}, PostgreSQL {ports.postgres}, S3 {ports.s3})")
    try:
        await asyncio.to_thread(stack.up, ports, log=lambda line: ctx.log(f"scaleout stack: {line}"),
                                brokers=BROKERS)
        yield stack, f"started by the phase in {home}, removed afterwards"
    finally:
        await asyncio.to_thread(stack.down, purge=True, log=lambda line: ctx.log(f"scaleout stack: {line}"))
        shutil.rmtree(home, ignore_errors=True)


async def group_members(settings: Settings, services: Sequence[str]) -> dict[str, int]:
    """Members of each service's consumer group that the coordinator has settled (state Stable)."""
    admin = make_admin(settings, "modelreg-bench")
    await admin.start()
    settled: dict[str, int] = {}
    try:
        for service in services:  # one group a request: asking several coordinators at once lost connections
            for response in await admin.describe_consumer_groups([settings.group_id(service)]):
                for group in response.groups:
                    # DescribeGroups: error_code, group_id, state, protocol_type, protocol, members, ...
                    _error, _group_id, state, _type, _protocol, members = group[:6]
                    settled[service] = len(members) if state == "Stable" else -1
    finally:
        await admin.close()
    return {s: settled.get(s, 0) for s in services}


def measured_processes(stack: LocalStack, fleets: Sequence[Fleet]) -> list[resources.Proc]:
    """Every service process (ingest-1, ingest-2, ...), every broker, PostgreSQL and S3."""
    procs = [resources.Proc(f"{name}-{i}", process.pid)
             for i, fleet in enumerate(fleets, 1) for name, process in fleet.processes.items()]
    for node in stack.kafka_nodes:
        if pid := stack.kafka_node_pid(node.node_id):
            procs.append(resources.Proc(f"kafka-{node.node_id}", pid))
    if postmaster := resources.postmaster_pid(stack.state.postgres_dir):
        procs.append(resources.Proc("postgres", postmaster, with_children=True))
    if stack.state.s3_pid:
        procs.append(resources.Proc("s3", stack.state.s3_pid))
    return procs


async def _step(ctx: Context, stack: LocalStack, fleets: Sequence[Fleet], step: int) -> dict[str, Any]:
    replicas, config = len(fleets), ctx.config
    for fleet in fleets:
        await wait_all_ready(fleet, timeout=180)

    seen: dict[str, int] | str = {}

    async def settled() -> bool:
        nonlocal seen
        try:
            seen = await group_members(ctx.settings, resources.SERVICES)
        except Exception as exc:  # noqa: BLE001 - no group coordinator yet on a fresh cluster: ask again
            seen = f"{type(exc).__name__}: {exc}"
            return False
        return all(n == replicas for n in seen.values())

    if not await wait_until(settled, timeout=120, interval=1.0):
        raise RuntimeError(f"the consumer groups did not settle with {replicas} member(s) each "
                           f"(members of each, -1 while rebalancing): {seen}")
    await pipeline.warm_up(ctx, f"sw{step}", label=f"scaleout {replicas} replica(s) warm-up")
    await wait_caught_up(ctx.settings, resources.SERVICES, timeout=60)
    procs = measured_processes(stack, fleets)
    idle = await resources.idle_cpu(procs, IDLE_SECONDS)
    ctx.log(f"scaleout: {config.versions:,} versions with {replicas} process(es) of every service")
    result = await pipeline.run(ctx, procs, idle=idle, kind=f"s{step}")
    return {"replicas": replicas, **{k: v for k, v in result.items() if k != "curves"}}


async def run(ctx: Context, results: dict[str, Any]) -> dict[str, Any]:
    """The steps on the cluster. A step that fails after others were measured ends the phase
    with what was measured, and its error in `results["errors"]` (the run still fails)."""
    logs = ctx.target.stack.dir / "logs" / f"bench-scaleout-{ctx.run_id}"
    async with cluster(ctx) as (stack, where):
        base_env = {**service_env(), **stack.env()}
        own = OwnPipeline.of(load_settings(**{k.lower(): v for k, v in stack.env().items()}),
                             stack.ports.postgres, "scaleout", ctx.run_id)
        on_cluster = dataclasses.replace(ctx, artifact=None, target=Target(stack, own.settings, base_env, {}))

        def env(name: str) -> dict[str, str]:
            return {**base_env, **stack.kafka_env(name), **own.env,
                    "MODELREG_SIGNING_KEY_FILE": str(stack.signing_key_file(name))}

        fleets: list[Fleet] = []
        runs: list[tuple[int, dict[str, Any]]] = []
        await own.create_database()
        try:
            await own.prepare()
            for step, replicas in enumerate(STEPS, 1):
                while len(fleets) < replicas:
                    fleet = Fleet(env, logs=logs / f"replica-{len(fleets) + 1}")
                    fleet.start_all()
                    fleets.append(fleet)
                while len(fleets) > replicas:
                    await asyncio.to_thread(fleets.pop().stop)
                try:
                    result = await _step(on_cluster, stack, fleets, step)
                except Exception as exc:
                    if not runs:
                        raise
                    results["errors"]["scaleout"] = f"step {step} ({replicas} replica(s)): {type(exc).__name__}: {exc}"
                    ctx.log(f"scaleout: {results['errors']['scaleout']}; reporting the {len(runs)} step(s) measured")
                    break
                runs.append((replicas, result))
        finally:
            for fleet in fleets:
                await asyncio.to_thread(fleet.stop)
            await own.remove(lambda line: ctx.log(f"scaleout: {line}"))
    figures = compare(runs, ctx.config.versions)
    one, two = figures["replicas"].get("1", {}), figures["replicas"].get("2", {})
    ctx.log(f"scaleout: 1 replica {one.get('staging_per_second')} versions/s to staging "
            f"({one.get('cpu_ms_per_version')} CPU ms/version), 2 replicas {two.get('staging_per_second')}/s "
            f"({two.get('cpu_ms_per_version')} ms)")
    return {"brokers": BROKERS, "partitions_per_topic": own.settings.topic_partitions, "cluster": where,
            "versions": ctx.config.versions, "models": ctx.config.models,
            "order": [replicas for replicas, _ in runs], **figures, "runs": [result for _, result in runs],
            "logs": str(logs)}
