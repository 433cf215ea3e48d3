"""ingest: `model.registered` -> artifact copied and version recorded -> `model.ingested` | `model.rejected`.

Per batch: version numbers are claimed and artifacts copied concurrently before the
transaction (`prepare`, what happened kept per event in the `Batch`); the transaction then
records each outcome and emits its events.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from shared import metrics, telemetry
from shared.consumer import Batch, ServiceHandlers, TraceParents, Tx, dead_letter_rows
from shared.events import (
    ArtifactRef,
    CloudEvent,
    IngestedEvidence,
    InvalidEvent,
    ManifestFile,
    ModelIngested,
    ModelIngestedData,
    ModelRegistered,
    ModelRegisteredData,
    ModelRejected,
    ModelRejectedData,
    Reason,
    RejectedEvidence,
)
from shared.runtime import Resources, ServiceApp
from shared.settings import Settings
from shared.storage import S3Location

from . import store
from .artifacts import (
    ArtifactMismatch,
    Copied,
    CopiedDirectory,
    DirectorySource,
    S3Prefix,
    SourceRefused,
    check_directory,
    copy_artifact,
    copy_directory,
    list_directory,
    registry_key,
    resolve_source,
)
from .logic import VersionClaim, claim_version

SERVICE = "ingest"
log = logging.getLogger(__name__)
UPLOADS_PREFIX = "uploads/"  # where the SDK and the API stage artifacts they upload
COPIES_IN_FLIGHT = 16
ARTIFACT_MISSING = "artifact_missing"


@dataclass(frozen=True)
class Prepared:
    """What happened to one registration before its transaction."""

    version: int | None
    copied: Copied | CopiedDirectory | None = None
    refusal: Reason | None = None
    duplicate: bool = False
    evidence: RejectedEvidence | None = None
    # The SDK's or the API's staging copies it came from, deleted once the batch is committed.
    staged: tuple[S3Location, ...] = ()


class Ingest:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    async def prepare(self, batch: Batch, events: Sequence[CloudEvent[Any]], parents: TraceParents) -> None:
        """Claim version numbers, then copy the artifacts, several at a time: a `Prepared`
        per event id in `batch.facts`."""
        prepared: dict[uuid.UUID, Prepared] = batch.facts
        sources: dict[uuid.UUID, Any] = {}
        for event in events:
            try:
                sources[event.id] = resolve_source(event.data.artifact.uri, self.resources.settings)
            except SourceRefused as refused:
                prepared[event.id] = Prepared(event.data.version,
                                              refusal=Reason(code=refused.code, message=refused.message))
        claimable = [e for e in events if e.id in sources]
        versions = await self._claim_versions(claimable)
        limit = asyncio.Semaphore(COPIES_IN_FLIGHT)

        async def copy(event: CloudEvent[ModelRegisteredData]) -> None:
            version = versions[event.id]
            if version is None:  # an explicit version that is taken: decided in the transaction
                prepared[event.id] = Prepared(event.data.version)
                return
            async with limit:
                with telemetry.span("ingest copy artifact", parent=parents.get(event.id),
                                    attributes={"modelreg.model": event.data.name, "modelreg.version": version,
                                                "modelreg.artifact.size_bytes": event.data.artifact.size_bytes}):
                    prepared[event.id] = await self._copy(event, version, sources[event.id])

        async with asyncio.TaskGroup() as group:
            for event in claimable:
                group.create_task(copy(event))

    async def _claim_versions(self, events: Sequence[CloudEvent[Any]]) -> dict[uuid.UUID, int | None]:
        """Numbers for versionless registrations (kept per event id, so a retry reuses them);
        None for explicit versions already recorded (no copy needed: same key or a conflict)."""
        if not events:
            return {}
        claims: dict[uuid.UUID, int | None] = {}
        # No transaction around these: a reservation only raises a name's last number (kept,
        # it leaves at most a gap), and each claim is one statement.
        async with self.resources.pool.acquire() as conn:
            explicit = [e for e in events if e.data.version is not None]
            if explicit:
                # Explicit numbers first, so automatic ones in the same batch never take them.
                await store.reserve_versions(conn, [(e.data.name, e.data.version) for e in explicit])
                taken = await store.existing_versions(conn, [(e.data.name, e.data.version) for e in explicit])
                for event in explicit:
                    claims[event.id] = None if (event.data.name, event.data.version) in taken \
                        else event.data.version
            versionless = [e for e in events if e.data.version is None]
            claims.update(await store.claim_next_versions(conn, [(e.id, e.data.name) for e in versionless]))
        return claims

    async def _copy(self, event: CloudEvent[ModelRegisteredData], version: int, source: Any) -> Prepared:
        artifact = event.data.artifact
        key = registry_key(event.data.name, version, artifact.sha256)
        try:
            if isinstance(source, DirectorySource):
                copied: Copied | CopiedDirectory = await self._copy_directory(event.data, source, key + "/")
            else:
                copied = await copy_artifact(self.resources.store, source, key,
                                             sha256=artifact.sha256, size_bytes=artifact.size_bytes)
        except SourceRefused as refused:
            return Prepared(version, refusal=Reason(code=refused.code, message=refused.message))
        except ArtifactMismatch as mismatch:
            return Prepared(version, refusal=Reason(code=mismatch.code, message=mismatch.message),
                            evidence=RejectedEvidence(
                                expected_sha256=artifact.sha256, found_sha256=mismatch.found_sha256,
                                expected_size=artifact.size_bytes, found_size=mismatch.found_size))
        staged: tuple[S3Location, ...] = ()
        if isinstance(source, S3Location) and source.bucket == self.resources.store.bucket \
                and source.key.startswith(UPLOADS_PREFIX):
            staged = (source,)
        if isinstance(source, S3Prefix) and source.bucket == self.resources.store.bucket \
                and source.prefix.startswith(UPLOADS_PREFIX) and isinstance(copied, CopiedDirectory):
            staged = tuple(S3Location(source.bucket, source.prefix + f.path) for f in copied.files)
        return Prepared(version, copied=copied, staged=staged)

    async def _copy_directory(self, data: ModelRegisteredData, source: DirectorySource,
                              dest_prefix: str) -> CopiedDirectory:
        """List, hold the policy's limits, then copy each file (shared.manifest)."""
        rule = self.resources.policy.rule_for(data.name).validation
        listed = await list_directory(self.resources.store, source, max_files=rule.max_files)
        check_directory(listed, size_bytes=data.artifact.size_bytes, max_files=rule.max_files,
                        max_bytes=rule.max_size_bytes)
        return await copy_directory(self.resources.store, listed, dest_prefix,
                                    sha256=data.artifact.sha256, size_bytes=data.artifact.size_bytes)

    async def after_commit(self, batch: Batch) -> None:
        """The registry's copies are recorded: the staging copies they came from can go."""
        prepared: dict[uuid.UUID, Prepared] = batch.facts
        for location in [location for p in prepared.values() for location in p.staged]:
            try:
                await self.resources.store.delete(location)
            except Exception as exc:  # a leftover upload is untidy, not wrong
                log.warning("could not delete the staged upload %s: %s", location.uri, exc)

    async def on_registered(self, tx: Tx, event: ModelRegistered) -> None:
        data = event.data
        prepared: Prepared = tx.batch.facts[event.id]
        version = prepared.version
        if data.version is not None:
            await store.reserve_version(tx.conn, data.name, data.version)
            new_versions: store.NewVersions = tx.batch.scope
            existing = new_versions.find(data.name, data.version) \
                or await store.find_version(tx.conn, data.name, data.version)
            claim = claim_version(existing.sha256 if existing else None, data.artifact.sha256)
            if claim is VersionClaim.DUPLICATE:
                return  # the same artifact again: no new state, no new events
            if claim is VersionClaim.CONFLICT:
                # The rejection names no version: that number belongs to the artifact that holds
                # it, and must not be blocked or archived on this registration's account.
                await self._reject(tx, event, None, Reason(
                    code="version_conflict",
                    message=f"version {data.version} of {data.name} is already registered with a "
                            "different artifact"), evidence=RejectedEvidence(requested_version=data.version),
                    record=False)
                return
        if prepared.refusal is not None and prepared.refusal.code == ARTIFACT_MISSING:
            await self._refuse_until_uploaded(tx, event, prepared.refusal)
            return
        if prepared.refusal is not None or prepared.copied is None:
            refusal = prepared.refusal or Reason(code="artifact_missing", message="the artifact was not copied")
            await self._reject(tx, event, version, refusal, evidence=prepared.evidence, record=version is not None)
            return
        assert version is not None
        await self._record(tx, event, version, "ingested", artifact_uri=prepared.copied.uri)
        artifact = data.artifact
        files = prepared.copied.files if isinstance(prepared.copied, CopiedDirectory) else None
        ref = ArtifactRef(uri=prepared.copied.uri, sha256=artifact.sha256,
                          size_bytes=artifact.size_bytes, format=artifact.format,
                          files=None if files is None else [
                              ManifestFile(path=f.path, size_bytes=f.size_bytes, sha256=f.sha256) for f in files])
        tx.emit(ModelIngested, ModelIngestedData(
            name=data.name, version=version, artifact=ref, run_id=data.run_id,
            registered_by=data.registered_by, dataset=data.dataset, signature=data.signature,
            description=data.description, imported_from=data.imported_from))
        tx.audit("ingested", name=data.name, version=version, to_stage="none",
                 actor=data.registered_by or event.source, reason="registered",
                 evidence=IngestedEvidence(
                     sha256=artifact.sha256, size_bytes=artifact.size_bytes, artifact_uri=ref.uri,
                     source_uri=artifact.uri, already_stored=prepared.copied.already_stored,
                     file_count=len(files) if files is not None else None, run_id=data.run_id,
                     metrics=dict(data.metrics), tags=dict(data.tags), params=dict(data.params),
                     format=artifact.format, description=data.description,
                     dataset=data.dataset.model_dump(exclude_none=True) if data.dataset else None,
                     signature=data.signature,
                     # The pipeline's claim of where it came from; promotion acts only on an
                     # approver's import request (README: Importing from MLflow).
                     imported_from=(data.imported_from.model_dump(mode="json")
                                    if data.imported_from is not None else None)))

    async def _refuse_until_uploaded(self, tx: Tx, event: ModelRegistered, refusal: Reason) -> None:
        """An artifact that is not there may only not be there *yet*: the registration is
        refused without taking a version (the rejection names none, no version row blocks
        one), and dead-lettered, so that once the artifact is uploaded `modelreg dlq redrive`
        brings it back; it then gets the number it claimed (claims are kept per event)."""
        await self._reject(tx, event, None, refusal, record=False)
        assert tx.record is not None
        metrics.DEAD_LETTERS.labels(SERVICE, ARTIFACT_MISSING).inc()
        tx.rows.extend(dead_letter_rows(SERVICE, tx.record, InvalidEvent(ARTIFACT_MISSING, refusal.message), event))

    async def _reject(self, tx: Tx, event: ModelRegistered, version: int | None, reason: Reason, *,
                      evidence: RejectedEvidence | None = None, record: bool) -> None:
        data = event.data
        if record and version is not None:
            await self._record(tx, event, version, "rejected", reasons=[reason.model_dump()])
        tx.emit(ModelRejected, ModelRejectedData(name=data.name, version=version, reasons=[reason]))
        tx.audit("rejected", name=data.name, version=version, actor=tx.source, reason=reason.message,
                 evidence=(evidence or RejectedEvidence()).model_copy(
                     update={"code": reason.code, "source_uri": data.artifact.uri}))

    async def _record(self, tx: Tx, event: ModelRegistered, version: int, status: str, *,
                      artifact_uri: str | None = None, reasons: list[dict[str, str]] | None = None) -> None:
        data, artifact = event.data, event.data.artifact
        new_versions: store.NewVersions = tx.batch.scope
        new_versions.add(
            name=data.name, version=version, status=status, source_uri=artifact.uri,
            artifact_uri=artifact_uri, sha256=artifact.sha256, size_bytes=artifact.size_bytes,
            format=artifact.format, run_id=data.run_id, metrics=data.metrics, params=data.params,
            tags=data.tags, dataset=data.dataset.model_dump() if data.dataset else None,
            signature=data.signature, description=data.description, source=event.source,
            registered_by=data.registered_by, correlation_id=event.correlation,
            registered_event_id=event.id, registered_at=event.time, reasons=reasons)


def build(resources: Resources) -> ServiceHandlers:
    ingest = Ingest(resources)
    return ServiceHandlers(SERVICE, {"model.registered": ingest.on_registered}, prepare=ingest.prepare,
                           batch_scope=new_versions, after_commit=ingest.after_commit)


@asynccontextmanager
async def new_versions(conn: Any, _events: list[Any]) -> AsyncIterator[store.NewVersions]:
    """The batch's new versions, written once its handlers are done (`store.NewVersions`)."""
    rows = store.NewVersions()
    yield rows
    await rows.write(conn)


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, build)
