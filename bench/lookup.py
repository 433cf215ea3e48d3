"""Champion lookup: `GET /api/v1/models/{name}/production` with many versions in the registry.

The versions are SEEDED straight into the registry's view tables (COPY), not pushed through the
pipeline, under a model-name prefix of their own, and deleted afterwards unless `--keep`. Each
model's latest version is its champion. The API is driven over a few keep-alive connections:
a first pass touches every model once (the API's champion cache is cold for it), then random
models (200 with the document), then the same with `If-None-Match` (304 revalidation).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from bench.context import Context
from bench.stats import downsample, summary
from shared.db import migrate

SEED_SEQ_BASE = -1  # seeded stage changes get negative audit seqs: never a live writer's


def seed_prefix(run_id: str) -> str:
    return f"bench-seed-{run_id}-"


async def seed(conn: asyncpg.Connection, prefix: str, versions: int, models: int) -> list[str]:
    """`versions` versions over `models` models; returns the model names."""
    per_model, extra = divmod(versions, models)
    now = datetime.now(UTC)
    names = [f"{prefix}{i:06d}" for i in range(models)]
    counts = [per_model + (1 if i < extra else 0) for i in range(models)]
    sha = "0" * 64
    version_rows, change_rows, model_rows = [], [], []
    seq = SEED_SEQ_BASE
    for name, count in zip(names, counts, strict=True):
        for version in range(1, count + 1):
            stage = "production" if version == count else "staging"
            version_rows.append((name, version, stage, "registered", sha, 1024, "onnx",
                                 f"s3://modelreg/artifacts/{name}/{version}/{sha}", json.dumps({"auc": 0.95}),
                                 "modelreg-bench (seeded)", uuid.uuid4(), now, now, 0))
            change_rows.append((seq, uuid.uuid4(), name, version, "none", "staging", "policy", "modelreg/bench",
                                "{}", now))
            seq -= 1
        change_rows.append((seq, uuid.uuid4(), name, count, "staging", "production", "policy", "modelreg/bench",
                            "{}", now))
        model_rows.append((name, count, count, count, seq, now, now))
        seq -= 1
    async with conn.transaction():
        await conn.copy_records_to_table(
            "view_versions", records=version_rows,
            columns=["name", "version", "stage", "status", "sha256", "size_bytes", "format", "artifact_uri",
                     "metrics", "registered_by", "correlation_id", "created_at", "updated_at", "last_seq"])
        await conn.copy_records_to_table(
            "view_stage_changes", records=change_rows,
            columns=["seq", "event_id", "name", "version", "from_stage", "to_stage", "reason", "actor", "evidence",
                     "at"])
        await conn.copy_records_to_table(
            "view_models", records=model_rows,
            columns=["name", "champion", "latest_version", "version_count", "champion_seq", "created_at",
                     "updated_at"])
    await conn.execute("ANALYZE view_models; ANALYZE view_versions; ANALYZE view_stage_changes")
    return names


async def unseed(conn: asyncpg.Connection, names: list[str]) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM view_stage_changes WHERE name = ANY($1::text[]) AND seq < 0", names)
        await conn.execute("DELETE FROM view_versions WHERE name = ANY($1::text[])", names)
        await conn.execute("DELETE FROM view_models WHERE name = ANY($1::text[])", names)


async def drive(session: aiohttp.ClientSession, url: str, plan: list[str], concurrency: int,
                etags: dict[str, str] | None = None, expect: int = 200) -> dict[str, Any]:
    """Request every model in `plan` over `concurrency` connections; latencies in ms."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    found: dict[str, str] = {}
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(plan):
            name = plan[position]
            position += 1
            headers = {"If-None-Match": etags[name]} if etags is not None else {}
            began = time.perf_counter()
            async with session.get(f"{url}/api/v1/models/{name}/production", headers=headers) as response:
                await response.read()
                elapsed = (time.perf_counter() - began) * 1000
                if response.status != expect:
                    errors[response.status] = errors.get(response.status, 0) + 1
                    continue
                latencies.append(elapsed)
                if "ETag" in response.headers:
                    found[name] = response.headers["ETag"]

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    result: dict[str, Any] = {**summary(latencies), "requests": len(plan), "seconds": round(seconds, 3),
              "requests_per_second": round(len(latencies) / seconds, 1) if seconds else None,
              "errors": {str(k): v for k, v in errors.items()}, "samples_ms": downsample(latencies, 1000)}
    result["_etags"] = found
    return result


async def run(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    await migrate(ctx.settings.dsn)
    prefix = seed_prefix(ctx.run_id)
    conn = await asyncpg.connect(ctx.settings.dsn)
    names: list[str] = []
    try:
        ctx.log(f"lookup: seeding {config.lookup_versions:,} versions of {config.lookup_models:,} models "
                "into the view tables (COPY)")
        began = time.perf_counter()
        names = await seed(conn, prefix, config.lookup_versions, config.lookup_models)
        seeded_seconds = time.perf_counter() - began
        total_versions = await conn.fetchval("SELECT count(*) FROM view_versions")
        api = await ctx.target.ensure_api(config.api_url, ctx.log)
        generator = random.Random(config.seed)
        plan = [generator.choice(names) for _ in range(config.lookup_requests)]
        connector = aiohttp.TCPConnector(limit=config.concurrency, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            ctx.log(f"lookup: {len(names):,} first lookups, then {len(plan):,} lookups and {len(plan):,} "
                    f"revalidations over {config.concurrency} connections")
            first = await drive(session, config.api_url, list(names), config.concurrency)
            etags = first.pop("_etags")
            warm = await drive(session, config.api_url, plan, config.concurrency)
            warm.pop("_etags")
            known = [name for name in plan if name in etags]
            revalidate = await drive(session, config.api_url, known, config.concurrency, etags=etags, expect=304)
            revalidate.pop("_etags")
    finally:
        if names and not config.keep:
            await unseed(conn, names)
        await conn.close()
    return {
        "seeded": True, "seeded_versions": config.lookup_versions, "seeded_models": len(names),
        "seed_seconds": round(seeded_seconds, 2), "registry_versions_total": total_versions,
        "model_prefix": prefix, "kept": config.keep, "api": api, "api_url": config.api_url,
        "concurrency": config.concurrency,
        "first_lookup": first, "lookup_200": warm, "revalidate_304": revalidate,
    }
