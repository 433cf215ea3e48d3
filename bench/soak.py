"""Soak: a steady flow of registrations and QA results while a random service is SIGKILLed at
random moments and started again, then every version accounted for (bench/accounting.py).

The phase (`--only soak`, `--soak-seconds`, default 600) runs a pipeline of its own on the
stack: its own database, topic prefix (with its ACLs), bucket (the audit writer's signed
checkpoints there must be its own) and service processes, so it kills nothing anyone else
started; all of it is removed afterwards (the services' logs stay under the stack's
logs/bench-soak-RUN/). `soak()` is the run itself, which the slow tests call for
two minutes on their own pipeline.

About one version in five gets a failing QA result and must stay in staging; the others
must each reach production exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.accounting import Expected, account_for
from bench.context import Context, put_small_artifact
from bench.fleet import Fleet, wait_all_ready
from bench.own_pipeline import OwnPipeline
from bench.own_pipeline import remove_bucket as remove_bucket  # the resilience tests' cleanup, from here as before
from bench.tap import Publisher, QaResponder, Tap
from shared.events import ArtifactSpec, ModelRegistered, ModelRegisteredData, new_event
from shared.settings import Settings

Log = Callable[[str], None]


@dataclass(frozen=True)
class SoakPlan:
    seconds: float = 600.0                          # how long registrations flow and services die
    rate: float = 2.0                               # registrations per second
    models: int = 20
    kill_every: tuple[float, float] = (10.0, 30.0)  # seconds between kills, uniformly drawn
    down_for: tuple[float, float] = (0.0, 5.0)      # how long a killed service stays down
    fail_every: int = 5                             # every fifth version of a model fails its QA
    settle_timeout: float = 600.0                   # after the flow: until everything is accounted for
    seed: int = 7


def fails_qa(version: int, plan: SoakPlan) -> bool:
    return version % plan.fail_every == 0


def expected(prefix: str, counts: dict[str, int], plan: SoakPlan) -> Expected:
    held = frozenset((name, v) for name, n in counts.items() for v in range(1, n + 1) if fails_qa(v, plan))
    return Expected(prefix, dict(counts), held)


async def _publish_steadily(publisher: Publisher, names: list[str], artifact: ArtifactSpec, rate: float,
                            until: float) -> collections.Counter[str]:
    loop = asyncio.get_running_loop()
    counts: collections.Counter[str] = collections.Counter()
    started, sent = loop.time(), 0
    while loop.time() < until:
        name = names[sent % len(names)]
        await publisher.send(new_event(ModelRegistered, ModelRegisteredData(
            name=name, artifact=artifact, registered_by="modelreg-bench", tags={"bench": "soak"}),
            source="pipelines/modelreg-bench"))
        await publisher.flush()
        counts[name] += 1
        sent += 1
        await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
    return counts


async def _kill_at_random(fleet: Fleet, plan: SoakPlan, rng: random.Random, until: float, log: Log,
                          found_dead: list[str]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        wait = rng.uniform(*plan.kill_every)
        if loop.time() + wait >= until:
            return
        await asyncio.sleep(wait)
        victim = rng.choice(fleet.services)
        if not fleet.running(victim):  # it died by itself: that is a finding, not a kill
            found_dead.append(victim)
        await asyncio.to_thread(fleet.kill, victim)
        down = rng.uniform(*plan.down_for)
        await asyncio.sleep(down)
        fleet.start(victim)
        log(f"soak: SIGKILLed {victim}, started again {down:.1f}s later")


async def soak(settings: Settings, fleet: Fleet, cli_env: dict[str, str], plan: SoakPlan, prefix: str,
               log: Log) -> dict[str, Any]:
    """Run the flow and the kills on `fleet` (started, ready), then account for every version.
    `settings` and `cli_env` reach the fleet's database and topics."""
    rng = random.Random(plan.seed)
    names = [f"{prefix}{i:03d}" for i in range(plan.models)]
    artifact = await put_small_artifact(settings, f"inbox/{prefix}soak/model.safetensors")
    pool = await asyncpg.create_pool(settings.dsn, min_size=1, max_size=2)
    found_dead: list[str] = []
    try:
        async with Publisher(settings) as publisher:
            responder = QaResponder(publisher, passes=lambda _name, version: not fails_qa(version, plan))
            async with Tap(settings, prefix, responder, topics=("qa.requested",)) as tap:
                loop = asyncio.get_running_loop()
                until = loop.time() + plan.seconds
                log(f"soak: {plan.rate:g} registrations/s over {plan.models} models for {plan.seconds:.0f}s, "
                    f"a random service SIGKILLed every {plan.kill_every[0]:.0f}-{plan.kill_every[1]:.0f}s")
                killer = asyncio.create_task(_kill_at_random(fleet, plan, rng, until, log, found_dead))
                try:
                    counts = await _publish_steadily(publisher, names, artifact, plan.rate, until)
                    await killer
                finally:
                    killer.cancel()
                tap.check()
                flow_ended = time.monotonic()
                want = expected(prefix, counts, plan)
                log(f"soak: {want.total:,} versions registered, {sum(fleet.kills.values())} kills; "
                    "waiting for every version to be accounted for")
                end = await account_for(fleet, settings, pool, want, cli_env, timeout=plan.settle_timeout)
    finally:
        await pool.close()
    problems = end.problems + [f"{name} had died by itself before it was killed" for name in found_dead]
    return {
        "seconds": plan.seconds, "rate_per_second": plan.rate, "models": plan.models, "versions": want.total,
        "failing_qa_kept_in_staging": len(want.held), "kills": sum(fleet.kills.values()),
        "kills_by_service": dict(fleet.kills), "settle_seconds_after_flow": end.settle_seconds,
        "drain_seconds_after_flow": end.drain_seconds,
        "accounting_seconds": round(time.monotonic() - flow_ended, 1),
        "accounted_for": not problems, "problems": problems,
    }


class SoakFailed(RuntimeError):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(f"not every version was accounted for: {result}")
        self.result = result


async def run(ctx: Context) -> dict[str, Any]:
    """The benchmark phase: a pipeline of its own on the stack, soaked for `--soak-seconds`."""
    stack = ctx.target.stack
    own = OwnPipeline.of(ctx.settings, stack.ports.postgres, "soak", ctx.run_id)
    settings = own.settings
    await own.create_database()
    fleet = Fleet(lambda name: {**ctx.target.env, **stack.kafka_env(name), **own.env,
                                "MODELREG_SIGNING_KEY_FILE": str(stack.signing_key_file(name))},
                  logs=stack.dir / "logs" / f"bench-soak-{ctx.run_id}")
    try:
        await own.prepare()
        fleet.start_all()
        await wait_all_ready(fleet, timeout=180)
        result = await soak(settings, fleet, {**ctx.target.env, **own.env},
                            SoakPlan(seconds=ctx.config.soak_seconds, seed=ctx.config.seed), f"soak-{ctx.run_id}-",
                            ctx.log)
    finally:
        await asyncio.to_thread(fleet.stop)
        await own.remove(lambda line: ctx.log(f"soak: {line}"))
    if not result["accounted_for"]:
        raise SoakFailed(result)
    return result
