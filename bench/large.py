"""A large artifact through ingest: generated with a streamed write (hashed as it is written,
never held in memory), uploaded to the registry bucket's `inbox/` with a multipart upload,
announced with `model.registered`, and timed until `model.ingested`, while the ingest process's
VmRSS is sampled every 50 ms. The big objects and the local file are deleted afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from bench.artifacts import safetensors_prefix
from bench.context import Context
from bench.resources import MIB, RssSampler
from bench.tap import Publisher, Seen, Tap
from shared.events import ArtifactSpec, ModelRegistered, ModelRegisteredData, new_event
from shared.storage import PART_SIZE, ObjectStore, S3Location, parse_s3_uri

BLOCK = 8 * MIB


def write_artifact(path: Path, size: int) -> str:
    """A `size`-byte safetensors file of incompressible data, one block at a time; returns
    the sha256."""
    pattern = os.urandom(BLOCK)
    hasher = hashlib.sha256()
    index = 0
    with open(path, "wb") as handle:
        prefix = safetensors_prefix(size)
        handle.write(prefix)
        hasher.update(prefix)
        written = len(prefix)
        while written < size:
            length = min(BLOCK, size - written)
            block = index.to_bytes(8, "little") + pattern[8:length] if length > 8 else pattern[:length]
            handle.write(block)
            hasher.update(block)
            written += length
            index += 1
    return hasher.hexdigest()


async def run(ctx: Context) -> dict[str, Any]:
    config = ctx.config
    settings = ctx.settings
    ingest_pid = ctx.target.services.get("ingest")
    if not ingest_pid:
        raise RuntimeError("no ingest process to watch")
    name = f"bench-{ctx.run_id}-large"
    key = f"inbox/bench-{ctx.run_id}/large.bin"
    directory = Path(tempfile.mkdtemp(prefix="modelreg-bench-"))
    path = directory / "large.bin"
    stored: str | None = None
    outcome: dict[str, Seen] = {}
    left_behind: list[str] = []
    async with ObjectStore(settings) as store:
        try:
            ctx.log(f"large: writing a {config.large_bytes / MIB:,.0f} MiB artifact to {path}")
            began = time.perf_counter()
            sha256 = await asyncio.to_thread(write_artifact, path, config.large_bytes)
            write_seconds = time.perf_counter() - began
            began = time.perf_counter()
            await store.ensure_bucket()
            with open(path, "rb") as artifact_file:
                await (await store.boto()).upload_fileobj(
                    artifact_file, settings.s3_bucket, key,
                    Config=TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                          max_concurrency=4))
            upload_seconds = time.perf_counter() - began
            path.unlink()
            ctx.log(f"large: uploaded in {upload_seconds:.1f}s; publishing model.registered")

            arrived = asyncio.Event()
            finished = asyncio.Event()

            def handle(seen: Seen) -> None:
                if seen.data.get("name") != name:
                    return
                outcome.setdefault(seen.topic, seen)
                if seen.topic in ("model.ingested", "model.rejected"):
                    arrived.set()
                if seen.topic in ("model.validated", "model.rejected"):
                    finished.set()

            spec = ArtifactSpec(uri=f"s3://{settings.s3_bucket}/{key}", sha256=sha256,
                                size_bytes=config.large_bytes, format="safetensors")
            async with Publisher(settings) as publisher, Tap(
                    settings, name, handle, topics=("model.ingested", "model.validated", "model.rejected")):
                sampler = RssSampler(ingest_pid, interval=0.05)
                sampler.start()
                began = time.perf_counter()
                await publisher.send(new_event(ModelRegistered, ModelRegisteredData(
                    name=name, artifact=spec, registered_by="modelreg-bench"), source="pipelines/modelreg-bench"))
                await publisher.flush()
                wait = max(120.0, config.large_bytes / (5 * 1000**2))  # slower than 5 MB/s is a failure
                try:
                    await asyncio.wait_for(arrived.wait(), timeout=min(wait, config.timeout * 4))
                finally:
                    sampler.stop()
                seconds = time.perf_counter() - began
                if "model.ingested" not in outcome:
                    reasons = outcome["model.rejected"].data.get("reasons")
                    raise RuntimeError(f"ingest rejected the large artifact: {reasons}")
                stored = outcome["model.ingested"].data["artifact"]["uri"]
                # validation reads the stored copy next; delete it only once that is done
                ctx.log(f"large: ingested in {seconds:.1f}s; waiting for validation before deleting it")
                try:
                    await asyncio.wait_for(finished.wait(), timeout=wait)
                except TimeoutError:
                    ctx.log("large: validation did not finish in time; deleting the objects anyway")
        finally:
            path.unlink(missing_ok=True)
            directory.rmdir()
            staged = [S3Location(settings.s3_bucket, key)] + ([parse_s3_uri(stored)] if stored else [])
            for location in staged:
                await (await store.boto()).delete_object(Bucket=location.bucket, Key=location.key)
            # checked, not assumed: a server that ignored the deletes leaves gigabytes behind
            left_behind = [location.uri for location in staged if await store.head(location) is not None]
            if left_behind:
                ctx.log(f"large: objects still present after deleting them: {', '.join(left_behind)}")
    return {
        "bytes": config.large_bytes, "model": name, "write_seconds": round(write_seconds, 2),
        "upload_seconds": round(upload_seconds, 2), "seconds": round(seconds, 3),
        "mb_per_second": round(config.large_bytes / 1000**2 / seconds, 1),
        "rss_baseline_mib": round(sampler.baseline / MIB, 1), "rss_peak_mib": round(sampler.peak / MIB, 1),
        "rss_growth_mib": round(sampler.growth / MIB, 1), "rss_samples": sampler.samples,
        "validated": "model.validated" in outcome,
        "objects_deleted": stored is not None and not left_behind, "objects_left": left_behind,
    }
