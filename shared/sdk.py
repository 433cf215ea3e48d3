"""A small Python SDK for pipelines, QA systems and ops: the same calls as the CLI.

    async with Registry(load_settings(), source="pipelines/fraud-train") as registry:
        await registry.register("fraud-detector", "model.pkl", metrics={"auc": 0.93})
        await registry.evaluate("fraud-detector", 3, suite="offline-eval", metrics={"auc": 0.93})
        await registry.request_promotion("fraud-detector", 3, to_stage="production",
                                         actor="alice", reason="hotfix")

Every call validates its input against the event contract before anything is sent, and
publishes one CloudEvent keyed by the model name. Local artifacts are hashed and uploaded to
the registry bucket's `uploads/` prefix first, streamed (multipart for large files); a local
directory is uploaded file by file and registered by its manifest's digest (shared.manifest).
A `file://` URI is not uploaded: it names a file or directory under MODELREG_ARTIFACT_ROOTS that
ingest reads in place; it is hashed here for the event (shared.local_artifacts).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from boto3.s3.transfer import TransferConfig

from shared.directories import DirectoryRefused, LocalFile, walk
from shared.events import (
    CONTENT_TYPE,
    ArtifactSpec,
    CloudEvent,
    Dataset,
    Environment,
    MetricsEvaluated,
    MetricsEvaluatedData,
    ModelRegistered,
    ModelRegisteredData,
    PromotionRequested,
    PromotionRequestedData,
    Stage,
    new_event,
)
from shared.kafka_security import kafka_client_options
from shared.keys import SigningKey
from shared.local_artifacts import file_uri, local_artifact_path
from shared.manifest import MAX_MANIFEST_FILES, FileEntry, is_directory_uri, manifest_digest
from shared.settings import Settings
from shared.storage import PART_SIZE, ObjectStore, S3Location, parse_s3_uri

Progress = Callable[[int], None]  # called with the bytes done since the last call


class Registry:
    def __init__(self, settings: Settings, *, source: str = "modelreg/sdk",
                 signing_key: SigningKey | None = None) -> None:
        self.settings = settings
        self.source = source
        self._signing_key = signing_key  # the API signs what it publishes for a token's identity
        self._producer = AIOKafkaProducer(**kafka_client_options(settings),
                                          acks="all", enable_idempotence=True, linger_ms=1)
        self._store = ObjectStore(settings)

    async def __aenter__(self) -> Registry:
        await self._producer.start()
        await self._store.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()
        await self._store.__aexit__(*exc)

    async def publish(self, event: CloudEvent[Any]) -> uuid.UUID:
        value = event.to_json()
        if self._signing_key is not None:
            value = self._signing_key.sign_event_bytes(value)
        await self._producer.send_and_wait(
            self.settings.topic(event.topic), value,
            key=event.subject.encode() if event.subject else None,
            headers=[("content-type", CONTENT_TYPE.encode())])
        return event.id

    async def upload(self, name: str, path: Path, *, progress: Progress | None = None) -> ArtifactSpec:
        """Hash a local file, then stream it to `uploads/` in the registry bucket (a directory:
        every file of it, see `upload_directory`)."""
        if path.is_dir():
            return await self.upload_directory(name, path, progress=progress)
        sha256, size = await asyncio.to_thread(_hash_file, path)
        key = f"uploads/{name}/{uuid.uuid4().hex}/{path.name}"
        await self._store.ensure_bucket()
        with open(path, "rb") as handle:
            await (await self._store.boto()).upload_fileobj(
                handle, self.settings.s3_bucket, key, Callback=progress,
                Config=TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                      max_concurrency=4))
        return ArtifactSpec(uri=f"s3://{self.settings.s3_bucket}/{key}", sha256=sha256, size_bytes=size,
                            format=_format_of(path))

    async def upload_directory(self, name: str, root: Path, *, progress: Progress | None = None,
                               max_files: int = MAX_MANIFEST_FILES) -> ArtifactSpec:
        """Hash every file of a local directory (an MLflow model, a Hugging Face folder), then
        stream each to one `uploads/` prefix; the spec names the prefix (ending in '/'), the
        manifest's digest and the files' total size (shared.manifest)."""
        files, entries = await _hash_directory(root, max_files)
        prefix = f"uploads/{name}/{uuid.uuid4().hex}/"
        await self._store.ensure_bucket()
        for file in files:
            with open(file.real, "rb") as handle:
                await (await self._store.boto()).upload_fileobj(
                    handle, self.settings.s3_bucket, prefix + file.path, Callback=progress,
                    Config=TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                          max_concurrency=4))
        return ArtifactSpec(uri=f"s3://{self.settings.s3_bucket}/{prefix}", sha256=manifest_digest(entries),
                            size_bytes=sum(e.size_bytes for e in entries))

    async def describe_file_uri(self, uri: str) -> ArtifactSpec:
        """sha256 and size of a `file://` artifact the registry reads in place (it must be under
        MODELREG_ARTIFACT_ROOTS, shared.local_artifacts), hashed here and copied by ingest, which
        checks the digest again; a directory: of its manifest. The spec names the real path."""
        path = local_artifact_path(uri, self.settings.artifact_root_paths)
        if path.is_dir():
            _, entries = await _hash_directory(path, MAX_MANIFEST_FILES)
            return ArtifactSpec(uri=file_uri(path), sha256=manifest_digest(entries),
                                size_bytes=sum(e.size_bytes for e in entries))
        sha256, size = await asyncio.to_thread(_hash_file, path)
        return ArtifactSpec(uri=file_uri(path), sha256=sha256, size_bytes=size, format=_format_of(path))

    async def describe_s3(self, uri: str) -> ArtifactSpec:
        """sha256 and size of an artifact already in S3 (streamed, not downloaded whole); for a
        prefix (ending in '/'), of its manifest."""
        if is_directory_uri(uri):
            return await self._describe_s3_prefix(uri)
        found = await self._store.digest(parse_s3_uri(uri))
        if found is None:
            raise FileNotFoundError(f"{uri} does not exist")
        return ArtifactSpec(uri=uri, sha256=found[0], size_bytes=found[1], format=_format_of(Path(uri)))

    async def _describe_s3_prefix(self, uri: str) -> ArtifactSpec:
        prefix = parse_s3_uri(uri)
        objects = await self._store.list_files(prefix, MAX_MANIFEST_FILES + 1)
        if not objects:
            raise FileNotFoundError(f"{uri} holds no objects")
        if len(objects) > MAX_MANIFEST_FILES:
            raise DirectoryRefused("too_many_files", f"{uri} holds more than {MAX_MANIFEST_FILES} objects")
        entries = []
        for path, _ in objects:
            found = await self._store.digest(S3Location(prefix.bucket, prefix.key + path))
            if found is None:
                raise FileNotFoundError(f"{uri}{path} went away while it was read")
            entries.append(FileEntry(path, found[1], found[0]))
        return ArtifactSpec(uri=uri, sha256=manifest_digest(entries), size_bytes=sum(e.size_bytes for e in entries))

    async def register(self, name: str, artifact: str | Path, *, version: int | None = None,
                       metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
                       tags: Mapping[str, str] | None = None, dataset: Mapping[str, str] | None = None,
                       signature: Mapping[str, Any] | None = None, description: str | None = None,
                       registered_by: str | None = None, run_id: str | None = None,
                       format: str | None = None, progress: Progress | None = None) -> uuid.UUID:
        """Publish `model.registered`; returns its id (the version's correlation id)."""
        data: dict[str, Any] = dict(name=name, version=version, metrics=dict(metrics or {}), params=dict(params or {}),
                    tags=dict(tags or {}), signature=dict(signature) if signature else None,
                    description=description, registered_by=registered_by or self.source, run_id=run_id,
                    dataset=Dataset(**dataset) if dataset else None)
        # Validate everything but the artifact before a possibly long upload.
        placeholder = ArtifactSpec(uri="s3://x/y", sha256="0" * 64, size_bytes=0)
        ModelRegisteredData(**data, artifact=placeholder)
        text = str(artifact)
        if text.startswith("s3://"):
            spec = await self.describe_s3(text)
        elif text.startswith("file://"):
            spec = await self.describe_file_uri(text)
        else:
            spec = await self.upload(name, Path(text), progress=progress)
        if format is not None:
            spec = spec.model_copy(update={"format": format})
        event = new_event(ModelRegistered, ModelRegisteredData(**data, artifact=spec), source=self.source)
        return await self.publish(event)

    async def evaluate(self, name: str, version: int, *, suite: str, metrics: Mapping[str, float],
                       environment: Environment = "offline", passed: bool | None = None,
                       dataset: Mapping[str, str] | None = None, evaluator: str | None = None,
                       correlationid: uuid.UUID | None = None) -> uuid.UUID:
        data = MetricsEvaluatedData(name=name, version=version, suite=suite, environment=environment,
                                    metrics=dict(metrics), passed=passed,
                                    dataset=Dataset(**dataset) if dataset else None,
                                    evaluator=evaluator or self.source)
        return await self.publish(new_event(MetricsEvaluated, data, source=self.source,
                                            correlationid=correlationid))

    async def request_promotion(self, name: str, version: int, *, to_stage: Stage, actor: str,
                                reason: str) -> uuid.UUID:
        data = PromotionRequestedData(name=name, version=version, to_stage=to_stage, actor=actor, reason=reason)
        return await self.publish(new_event(PromotionRequested, data, source=self.source))


async def _hash_directory(root: Path, max_files: int) -> tuple[list[LocalFile], list[FileEntry]]:
    """A local directory's files and their manifest entries (refused: none, or too many)."""
    files = await asyncio.to_thread(walk, root, max_files)
    if len(files) > max_files:
        raise DirectoryRefused("too_many_files", f"{root} holds more than {max_files} files")
    if not files:
        raise DirectoryRefused("artifact_missing", f"{root} holds no files")
    entries = []
    for file in files:
        sha256, size = await asyncio.to_thread(_hash_file, file.real)
        entries.append(FileEntry(file.path, size, sha256))
    return files, entries


def _hash_file(path: Path) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


_SUFFIX_FORMATS = {".pkl": "pickle", ".pickle": "pickle", ".joblib": "joblib", ".onnx": "onnx",
                   ".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".bin": None}


def _format_of(path: Path) -> str | None:
    return _SUFFIX_FORMATS.get(path.suffix.lower())
