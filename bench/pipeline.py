"""Pipeline throughput: N versions published as `model.registered` as fast as possible, a
built-in QA responder answering each `qa.requested` at once, and the rate until every version
is in staging and until every one is decided (promoted to production, or `held`), all judged
from the events on Kafka."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bench import resources
from bench.context import Context
from bench.stats import downsample
from bench.tap import Publisher, QaResponder, Seen, Tap, random_auc, wait_caught_up
from shared.events import ModelRegistered, ModelRegisteredData, new_event

Key = tuple[str, int]

# Versions through the whole pipeline before anything is measured. A fresh broker's JVM spends
# its first few hundred versions compiling its hot paths (C2 alone took a third of the broker's
# CPU in the third run after a start), and new service processes fill their caches: a long-running
# registry is measured warm, as JMH measures code after its warm-up iterations.
WARM_VERSIONS = 300


@dataclass
class Progress:
    """When (seconds after the first publish) each version reached each point."""

    t0: float = 0.0
    published_seconds: float = 0.0
    ingested: dict[Key, float] = field(default_factory=dict)
    validated: dict[Key, float] = field(default_factory=dict)
    staged: dict[Key, float] = field(default_factory=dict)
    decided: dict[Key, float] = field(default_factory=dict)
    promoted: int = 0
    held: int = 0
    rejected: dict[Key, str] = field(default_factory=dict)

    def record(self, seen: Seen) -> None:
        name, version = seen.key
        if version is None:
            return
        key, at = (name, int(version)), seen.received - self.t0
        if seen.topic == "model.ingested":
            self.ingested.setdefault(key, at)
        elif seen.topic == "model.validated":
            self.validated.setdefault(key, at)
        elif seen.topic == "model.rejected":
            reasons = seen.data.get("reasons") or [{}]
            self.rejected.setdefault(key, str(reasons[0].get("code", "rejected")))
        elif seen.topic == "model.promoted":
            to_stage = seen.data.get("to_stage")
            if to_stage == "staging":
                self.staged.setdefault(key, at)
            elif to_stage == "production" and key not in self.decided:
                self.decided[key] = at
                self.promoted += 1
        elif seen.topic == "registry.audit" and seen.data.get("action") == "held" and key not in self.decided:
            self.decided[key] = at
            self.held += 1

    def done(self, total: int) -> bool:
        return len(self.decided) + len(self.rejected.keys() - self.decided.keys()) >= total


async def push(ctx: Context, prefix: str, versions: int, models: int, *, timeout: float,
               auc_seed: int, on_start: Any = None, label: str = "throughput") -> Progress:
    """Publish `versions` registrations over `models` models and follow them until decided."""
    artifact = await ctx.small_artifact()
    names = [f"{prefix}{i:03d}" for i in range(models)]
    progress = Progress()
    async with Publisher(ctx.settings) as publisher:
        responder = QaResponder(publisher, random_auc(auc_seed))

        async def handle(seen: Seen) -> None:
            if seen.topic == "qa.requested":
                await responder(seen)
            else:
                progress.record(seen)

        async with Tap(ctx.settings, prefix, handle) as tap:
            events = [new_event(ModelRegistered, ModelRegisteredData(
                name=names[i % models], artifact=artifact, registered_by="modelreg-bench",
                metrics={"auc": 0.95}, tags={"bench": ctx.run_id}), source="pipelines/modelreg-bench")
                for i in range(versions)]
            if on_start is not None:
                on_start()
            progress.t0 = time.time()
            for event in events:
                await publisher.send(event)
            await publisher.flush()
            published = time.time() - progress.t0
            ctx.log(f"{label}: published {versions:,} versions in {published:.2f}s; waiting for decisions")
            deadline = time.monotonic() + timeout
            last_log = time.monotonic()
            while not progress.done(versions) and time.monotonic() < deadline:
                tap.check()
                await asyncio.sleep(0.05)
                if time.monotonic() - last_log > 5:
                    last_log = time.monotonic()
                    ctx.log(f"{label}: {len(progress.ingested):,} ingested, {len(progress.staged):,} in staging, "
                            f"{len(progress.decided):,} decided of {versions:,}")
            progress.published_seconds = published
    return progress


async def warm_up(ctx: Context, prefix: str, *, label: str) -> None:
    """`WARM_VERSIONS` versions (at most the phase's own count) through the whole pipeline."""
    config = ctx.config
    warm = min(config.versions, WARM_VERSIONS)
    progress = await push(ctx, ctx.names(prefix), warm, config.models, timeout=config.timeout,
                          auc_seed=config.seed, label=label)
    if not progress.done(warm):
        raise RuntimeError(f"{label}: only {len(progress.decided)} of {warm} versions were decided in "
                           f"{config.timeout:g} s: are the services healthy? (see their logs)")


def _rate(count: int, times: dict[Key, float], total: int) -> dict[str, Any]:
    if not times:
        return {"count": 0, "seconds": None, "per_second": None, "complete": False}
    seconds = max(times.values())
    return {"count": len(times), "seconds": round(seconds, 3), "per_second": round(len(times) / seconds, 1),
            "complete": len(times) >= total}


def pipeline_rate(result: dict[str, Any], point: str) -> float | None:
    """Versions per second of a throughput result to `point` ("staging", "decided", ...)."""
    return (result.get(point) or {}).get("per_second")


def cpu_ms_per_version(result: dict[str, Any], versions: int) -> float | None:
    """CPU milliseconds per version across every measured process of a throughput result, less
    what those processes burn idle over the run's wall time when that was measured."""
    cpu = result.get("cpu_seconds")
    if not cpu or not versions:
        return None
    idle = result.get("idle_cpu_per_second") or {}
    idle_seconds = sum(idle.get(name, 0.0) for name in cpu) * result.get("cpu_wall_seconds", 0.0)
    per_version: float = round(max(sum(cpu.values()) - idle_seconds, 0.0) / versions * 1e3, 2)
    return per_version


async def run(ctx: Context, procs: list[resources.Proc] | None, *, idle: dict[str, float] | None = None,
              kind: str = "t") -> dict[str, Any]:
    """The throughput load on names of `kind`; with `procs`, their CPU across it (and `idle`,
    what each burns per second doing nothing, to take that out of the per-version cost)."""
    config = ctx.config
    snapshots: list[resources.Snapshot] = []
    left = 0

    def start_cpu() -> None:
        if procs:
            snapshots.append(resources.snapshot(procs))

    progress = await push(ctx, ctx.names(kind), config.versions, config.models, timeout=config.timeout,
                          auc_seed=config.seed, on_start=start_cpu)
    if procs:  # CPU until the services (the audit writer last) have consumed everything the run caused
        left = await wait_caught_up(ctx.settings, resources.SERVICES, timeout=min(120.0, config.timeout))
        snapshots.append(resources.snapshot(procs))
    total = config.versions
    result: dict[str, Any] = {
        "versions": total, "models": config.models, "artifact_bytes": 1024,
        "published_seconds": round(progress.published_seconds, 3),
        "ingested": _rate(len(progress.ingested), progress.ingested, total),
        "validated": _rate(len(progress.validated), progress.validated, total),
        "staging": _rate(len(progress.staged), progress.staged, total),
        "decided": _rate(len(progress.decided), progress.decided, total),
        "promoted_to_production": progress.promoted, "held": progress.held,
        "rejected": len(progress.rejected), "rejection_codes": sorted(set(progress.rejected.values())),
        "curves": {point: downsample(list(getattr(progress, point).values()), 400)
                   for point in ("ingested", "validated", "staged", "decided")},
    }
    if len(snapshots) == 2:
        before, after = snapshots
        result["cpu_seconds"] = {name: round(after.cpu[name] - before.cpu[name], 3) for name in before.cpu}
        result["cpu_wall_seconds"] = round(after.at - before.at, 3)
        result["lag_left_at_cpu_snapshot"] = left
        if idle:
            result["idle_cpu_per_second"] = idle
    return result
