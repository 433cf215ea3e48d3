"""ingest: `model.registered` -> the version recorded -> `model.ingested` | `model.rejected`."""

from __future__ import annotations

from shared.consumer import ServiceHandlers, Tx
from shared.events import (
    ArtifactRef,
    ModelIngested,
    ModelIngestedData,
    ModelRegistered,
    ModelRejected,
    ModelRejectedData,
    Reason,
)
from shared.runtime import Resources, ServiceApp
from shared.settings import Settings

from . import store
from .logic import VersionClaim, claim_version

SERVICE = "ingest"


class Ingest:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    async def on_registered(self, tx: Tx, event: ModelRegistered) -> None:
        data = event.data
        artifact = data.artifact
        if data.version is None:
            version = await store.next_version(tx.conn, data.name)
        else:
            version = data.version
            await store.reserve_version(tx.conn, data.name, version)
            existing = await store.find_version(tx.conn, data.name, version)
            claim = claim_version(existing.sha256 if existing else None, artifact.sha256)
            if claim is VersionClaim.DUPLICATE:
                return
            if claim is VersionClaim.CONFLICT:
                reason = Reason(code="version_conflict",
                                message=f"version {version} of {data.name} is already registered "
                                        "with a different artifact")
                tx.emit(ModelRejected, ModelRejectedData(name=data.name, version=version,
                                                         reasons=[reason]))
                tx.audit("rejected", name=data.name, version=version, reason=reason.message,
                         evidence={"code": reason.code, "sha256": artifact.sha256})
                return

        await store.insert_version(
            tx.conn, name=data.name, version=version, status="ingested",
            source_uri=artifact.uri, artifact_uri=artifact.uri, sha256=artifact.sha256,
            size_bytes=artifact.size_bytes, format=artifact.format, run_id=data.run_id,
            metrics=data.metrics, params=data.params, tags=data.tags,
            dataset=data.dataset.model_dump() if data.dataset else None,
            signature=data.signature, description=data.description, source=event.source,
            registered_by=data.registered_by, correlation_id=event.correlation,
            registered_event_id=event.id, registered_at=event.time)
        ref = ArtifactRef(uri=artifact.uri, sha256=artifact.sha256,
                          size_bytes=artifact.size_bytes, format=artifact.format)
        tx.emit(ModelIngested, ModelIngestedData(name=data.name, version=version, artifact=ref,
                                                 run_id=data.run_id,
                                                 registered_by=data.registered_by))
        tx.audit("ingested", name=data.name, version=version, to_stage="none",
                 actor=data.registered_by, reason="registered",
                 evidence={"sha256": artifact.sha256, "artifact_uri": ref.uri,
                           "size_bytes": artifact.size_bytes})


def build(resources: Resources) -> ServiceHandlers:
    ingest = Ingest(resources)
    return ServiceHandlers(SERVICE, {"model.registered": ingest.on_registered})


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, build)
