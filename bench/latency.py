"""End-to-end latency at a fixed offered load: `--rate` versions/s for `--duration` seconds,
each a new model (so each is promoted to production when its QA result passes), and the time
from publishing `model.registered` to seeing `model.promoted` to production, whole and per hop.

Hops use the CloudEvents `time` of the services' events and the benchmark's own clock for what
it publishes and receives (one machine, one clock).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bench.context import Context
from bench.stats import downsample, summary
from bench.tap import Publisher, QaResponder, Seen, Tap
from shared.events import ModelRegistered, ModelRegisteredData, new_event

HOPS = (
    ("registered→ingested", "registered", "ingested"),
    ("ingested→validated", "ingested", "validated"),
    ("validated→staging", "validated", "staging"),
    ("qa.requested→result published", "qa_requested", "qa_answered"),
    ("result→promoted", "qa_answered", "production"),
    ("promoted→seen (outbox relay, Kafka)", "production", "production_seen"),
)


@dataclass
class Trace:
    """Unix timestamps of one version's life."""

    registered: float
    points: dict[str, float] = field(default_factory=dict)

    def hop(self, start: str, end: str) -> float | None:
        begin = self.registered if start == "registered" else self.points.get(start)
        finish = self.points.get(end)
        return None if begin is None or finish is None else (finish - begin) * 1000


async def run(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    artifact = await ctx.small_artifact()
    prefix = ctx.names("l")
    count = max(1, int(config.rate * config.duration))
    traces: dict[str, Trace] = {}

    async with Publisher(ctx.settings) as publisher:
        responder = QaResponder(publisher)

        async def handle(seen: Seen) -> None:
            name = seen.data.get("name", "")
            trace = traces.get(name)
            if trace is None:
                return
            if seen.topic == "qa.requested":
                await responder(seen)
                trace.points["qa_requested"] = seen.time
                trace.points["qa_answered"] = responder.answered[seen.key]  # type: ignore[index]
            elif seen.topic == "model.ingested":
                trace.points.setdefault("ingested", seen.time)
            elif seen.topic == "model.validated":
                trace.points.setdefault("validated", seen.time)
            elif seen.topic == "model.promoted" and seen.data.get("to_stage") == "staging":
                trace.points.setdefault("staging", seen.time)
            elif seen.topic == "model.promoted" and seen.data.get("to_stage") == "production":
                trace.points.setdefault("production", seen.time)
                trace.points.setdefault("production_seen", seen.received)

        async with Tap(ctx.settings, prefix, handle,
                       topics=("model.ingested", "model.validated", "qa.requested", "model.promoted")) as tap:
            ctx.log(f"latency: offering {config.rate:g} versions/s for {config.duration:g}s ({count:,} versions)")
            started = time.monotonic()
            behind = 0.0
            for i in range(count):
                due = started + i / config.rate
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    behind = max(behind, -wait)
                name = f"{prefix}{i:05d}"
                event = new_event(ModelRegistered, ModelRegisteredData(
                    name=name, artifact=artifact, registered_by="modelreg-bench"),
                    source="pipelines/modelreg-bench")
                traces[name] = Trace(registered=time.time())
                await publisher.send(event)
            offered = time.monotonic() - started
            drain = time.monotonic() + max(30.0, min(config.timeout, 120.0))
            while time.monotonic() < drain and any("production_seen" not in t.points for t in traces.values()):
                tap.check()
                await asyncio.sleep(0.05)

    done = [t for t in traces.values() if "production_seen" in t.points]
    e2e = [(t.points["production_seen"] - t.registered) * 1000 for t in done]
    hops = {}
    for label, start, end in HOPS:
        values = [v for t in done if (v := t.hop(start, end)) is not None]
        hops[label] = summary(values)
    return {
        "offered_rate": config.rate, "duration": config.duration, "versions": count,
        "achieved_offer_rate": round((count - 1) / offered, 2) if count > 1 and offered > 0 else None,
        "publisher_max_behind_ms": round(behind * 1000, 1),
        "completed": len(done), "e2e_ms": summary(e2e), "hops_ms": hops, "e2e_samples_ms": downsample(e2e),
    }
