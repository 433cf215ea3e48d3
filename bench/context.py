"""What every phase gets: the configuration, the system under test, the run's names, a logger."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from bench.artifacts import safetensors_prefix
from bench.config import BenchConfig
from bench.target import Target
from shared.events import ArtifactSpec
from shared.settings import Settings
from shared.storage import ObjectStore

SMALL_ARTIFACT_BYTES = 1024


@dataclass
class Context:
    config: BenchConfig
    target: Target
    run_id: str
    log: Callable[[str], None]
    artifact: ArtifactSpec | None = None

    @property
    def settings(self) -> Settings:
        return self.target.settings

    def names(self, kind: str) -> str:
        """The model-name prefix of one phase. `demo-*` names get the demo rule of
        infra/policy.yaml: an offline-eval QA result with thresholds and a champion to beat."""
        return f"demo-bench-{self.run_id}-{kind}"

    async def small_artifact(self) -> ArtifactSpec:
        """A 1 KiB artifact in the registry bucket's `inbox/`, uploaded once per run."""
        if self.artifact is None:
            self.artifact = await put_small_artifact(self.settings, f"inbox/bench-{self.run_id}/model.safetensors")
        return self.artifact


async def put_small_artifact(settings: Settings, key: str) -> ArtifactSpec:
    """A 1 KiB safetensors artifact at `key` of the registry bucket."""
    prefix = safetensors_prefix(SMALL_ARTIFACT_BYTES)
    body = prefix + os.urandom(SMALL_ARTIFACT_BYTES - len(prefix))
    async with ObjectStore(settings) as store:
        await store.ensure_bucket()
        await (await store.boto()).put_object(Bucket=settings.s3_bucket, Key=key, Body=body)
    return ArtifactSpec(uri=f"s3://{settings.s3_bucket}/{key}", sha256=hashlib.sha256(body).hexdigest(),
                        size_bytes=len(body), format="safetensors")
