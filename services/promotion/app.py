"""promotion: validated versions to staging, staging to production on evidence, rollbacks,
and manual requests from approvers.

Consumes `model.ingested` (what exists), `model.validated`, `model.rejected`,
`metrics.evaluated`, `promotion.requested` and `model.archived`; emits `model.promoted` and
`model.demoted`. Every decision about a model runs under that model's lock, so two instances
(or a rebalance) never make two champions; the database's partial unique index backs it up.

The decisions are the registered model's (shared/domain/registered_model.py): a handler loads
the model from the batch, calls one of its commands, and records each domain event it returns
as the events, audit records and rows that say so (`_record`).

Before any move to production the stored artifact is checked (integrity.py), outside the
transaction. `prepare` checks, before the batch's transaction opens, the versions its events
are likely to crown (a QA result or an approver's request for a stored version); a version it
did not foresee (a rollback's target, a version the batch itself introduces) raises `NeedsIO`
for every version the batch may crown, the transaction is rolled back, the checks run, and
the batch is decided again with the verdicts in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, assert_never

from opentelemetry import context as otel_context

from shared import metrics, telemetry
from shared.attestation import promotion_statement, sign_statement
from shared.consumer import Batch, NeedsIO, ServiceHandlers, TraceParents, Tx
from shared.domain.registered_model import (
    ApprovalRecorded,
    ApprovalsCleared,
    Blocked,
    Decided,
    Demoted,
    DomainEvent,
    ImportSettled,
    ImportWaiting,
    Noted,
    Promoted,
    Quarantined,
    RegisteredModel,
    Request,
    Validated,
    VerdictNeeded,
)
from shared.events import (
    ArtifactRef,
    Attestation,
    CloudEvent,
    EvaluatedEvidence,
    MetricsEvaluated,
    ModelArchived,
    ModelDemoted,
    ModelDemotedData,
    ModelIngested,
    ModelPromoted,
    ModelPromotedData,
    ModelRejected,
    ModelRejectedData,
    ModelRestored,
    ModelValidated,
    PromotionRequested,
    Reason,
)
from shared.manifest import canonical_manifest, is_directory_uri
from shared.runtime import Resources, ServiceApp
from shared.settings import Settings
from shared.signing import signing_key

from . import early
from .integrity import Verdict, verify_artifact
from .store import VersionRow
from .unit_of_work import PromotionBatch, names_and_versions

SERVICE = "promotion"
VERIFICATIONS_IN_FLIGHT = 8


class Promotion:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.policy = resources.policy

    async def prepare(self, batch: Batch, events: Sequence[CloudEvent[Any]], parents: TraceParents) -> None:
        """Check, before the transaction, the versions this batch's events may crown, so that a
        crown costs no rolled-back attempt: a QA result or an approver's request for a version
        (stored, or registered in this very batch); a validation of a version whose QA results
        came first (staged, then crowned at once); a registration whose version's QA result or
        request waited for it. What this does not foresee, a handler still asks for
        (`VerdictNeeded`, in `_decide`)."""
        asked = {(e.data.name, e.data.version): e for e in events if _may_crown(e)}
        staged = {(e.data.name, e.data.version): e for e in events if e.topic == "model.validated"}
        arriving = {(e.data.name, e.data.version): e for e in events if e.topic == "model.ingested"}
        if not (asked or staged or arriving):
            return
        async with self.resources.pool.acquire() as conn:
            rows = await conn.fetch(
                # A union of joins, not an OR, which would read the whole table.
                f"""SELECT {_CHECKED} FROM promotion_versions v
                        JOIN unnest($1::text[], $2::int[]) AS k(name, version) USING (name, version)
                   WHERE stage IN ('none', 'staging') AND blocked IS NULL
                   UNION
                   SELECT {_CHECKED} FROM promotion_versions v
                        JOIN unnest($3::text[], $4::int[]) AS k(name, version) USING (name, version)
                   WHERE stage IN ('none', 'staging') AND blocked IS NULL
                     AND EXISTS (SELECT 1 FROM evaluations e WHERE e.name = v.name AND e.version = v.version)
                   UNION ALL
                   SELECT DISTINCT name, version, NULL, NULL, NULL, NULL FROM promotion_deferred
                   WHERE (name, version) IN (SELECT * FROM unnest($5::text[], $6::int[]))
                     AND topic IN ('metrics.evaluated', 'promotion.requested')""",
                *names_and_versions(asked), *names_and_versions(staged), *names_and_versions(arriving))
        checks: dict[tuple[Any, ...], _Check] = {}
        for r in rows:
            key = (r["name"], r["version"])
            cause = asked.get(key) or staged.get(key) or arriving[key]
            # The record's trace, else the version's own (as its handler's span continues).
            parent = parents.get(cause.id) or telemetry.parent_from((), fallback=r["traceparent"])
            if r["artifact_uri"] is None:  # a crown waits for this registration: as it will be stored
                checks.update([_registration_check(arriving[key], parent)])
            else:
                checks[("integrity", *key, r["artifact_uri"], r["sha256"])] = _Check(
                    r["artifact_uri"], r["sha256"], r["manifest"], parent)
        # A version this batch registers and measures is in no table yet: its registration says
        # what to check.
        for key in arriving.keys() & asked.keys():
            checks.update([_registration_check(arriving[key], parents.get(asked[key].id))])
        await self._verify(batch, checks)

    async def _verify(self, batch: Batch, checks: dict[tuple[Any, ...], _Check]) -> None:
        """Each check's verdict into `batch.facts`, a few at a time, each in its version's trace."""
        limit = asyncio.Semaphore(VERIFICATIONS_IN_FLIGHT)
        store = self.resources.store

        async def verify(key: tuple[Any, ...], check: _Check) -> None:
            async with limit:
                with telemetry.span("promotion verify artifact", parent=check.parent, attributes={
                        "modelreg.model": key[1], "modelreg.version": key[2]}):
                    batch.facts[key] = await verify_artifact(store, check.uri, check.sha256, check.manifest)

        async with asyncio.TaskGroup() as group:
            for key, check in checks.items():
                group.create_task(verify(key, check))

    @contextlib.asynccontextmanager
    async def batch_scope(self, conn: Any, events: list[Any]) -> AsyncIterator[PromotionBatch]:
        """Load the batch's models, let the handlers decide in memory, write it all back."""
        models = PromotionBatch(conn)
        await models.load(events)
        yield models
        await models.flush()

    # -- what the other services tell us ------------------------------------------------

    async def on_ingested(self, tx: Tx, event: ModelIngested) -> None:
        data = event.data
        known = _models(tx).get(data.name, data.version) is not None
        waited = _models(tx).add_version(
            name=data.name, version=data.version, sha256=data.artifact.sha256,
            artifact_uri=data.artifact.uri, registered_by=data.registered_by, correlation_id=event.correlation,
            traceparent=telemetry.current_traceparent().get("traceparent"),
            manifest=_manifest_of(data.artifact))
        if data.imported_from is not None and not known:
            source = data.imported_from.model_dump(mode="json")
            await self._decide(tx, data.name, data.version,
                               lambda model: model.claim_import(data.version, source, event.id))
        if waited:
            await early.replay(tx, data.name, waited, self.waits_for_version)

    async def on_rejected(self, tx: Tx, event: ModelRejected) -> None:
        """Validation refused an ingested version (`RegisteredModel.reject`).
        (Ingest's rejections concern versions that never reached us; our own we have applied.)"""
        data, number = event.data, event.data.version
        if number is None or event.source != "modelreg/validation":
            return
        if await self._version(tx, data.name, number) is None:  # held
            return
        why = "; ".join(f"{r.code}: {r.message}" for r in data.reasons)
        evidence = {"reasons": [r.model_dump() for r in data.reasons], "rejected_by": event.source}
        await self._decide(tx, data.name, number, lambda model: model.reject(number, why, evidence))

    async def on_archived(self, tx: Tx, event: ModelArchived) -> None:
        data = event.data
        row = _models(tx).get(data.name, data.version)
        if row is not None and row.stage != "archived":
            _models(tx).set_stage(row, "archived", reason=data.reason, actor=event.source, event_id=event.id,
                                 evidence={"restorable": data.restorable}, at=event.time)

    async def on_restored(self, tx: Tx, event: ModelRestored) -> None:
        """Archival brought an archived version back: it is in `none`, movable by hand again."""
        data = event.data
        row = await self._version(tx, data.name, data.version)
        if row is not None and row.stage == "archived":
            _models(tx).set_stage(row, "none", reason="restored", actor=data.actor, event_id=event.id,
                                 evidence={"artifact_uri": data.artifact_uri}, at=event.time, superseded_at=None)

    async def _version(self, tx: Tx, name: str, version: int) -> VersionRow | None:
        """The version (its model locked by the batch); None, the event held for later, if not seen yet."""
        row = _models(tx).get(name, version)
        if row is None:
            assert tx.cause is not None and tx.record is not None
            _models(tx).hold(event_id=tx.cause.id, topic=tx.record.topic, name=name, version=version,
                            partition=tx.record.partition, offset=tx.record.offset,
                            payload=tx.record.value or tx.cause.to_json())
        return row

    @property
    def waits_for_version(self) -> dict[str, Any]:
        return {"model.validated": self.on_validated, "metrics.evaluated": self.on_evaluated,
                "promotion.requested": self.on_requested, "model.rejected": self.on_rejected,
                "model.restored": self.on_restored}

    # -- policy and people: the model decides (shared/domain/registered_model.py) ----------

    async def on_validated(self, tx: Tx, event: ModelValidated) -> None:
        data = event.data
        if await self._version(tx, data.name, data.version) is None:
            return
        evidence = {"checks": [c.model_dump() for c in data.checks]}
        await self._decide(tx, data.name, data.version, lambda model: model.validate(data.version, evidence))

    async def on_evaluated(self, tx: Tx, event: MetricsEvaluated) -> None:
        data = event.data
        row = await self._version(tx, data.name, data.version)
        if row is None:
            return
        result = _models(tx).add_evaluation(
            event_id=event.id, name=data.name, version=data.version, suite=data.suite,
            environment=data.environment, metrics=data.metrics, passed=data.passed,
            dataset=data.dataset.model_dump() if data.dataset else None, evaluator=data.evaluator,
            evaluated_at=event.time)
        tx.audit("evaluated", name=row.name, version=row.version, from_stage=row.stage, to_stage=row.stage,
                 actor=data.evaluator or event.source, reason=f"{data.suite} ({data.environment})",
                 evidence=EvaluatedEvidence(
                     suite=data.suite, environment=data.environment, metrics=dict(data.metrics), passed=data.passed,
                     evaluator=data.evaluator,
                     dataset=data.dataset.model_dump(exclude_none=True) if data.dataset else None),
                 correlation=row.correlation_id)
        await self._decide(tx, data.name, data.version, lambda model: model.evaluate(data.version, result))

    async def on_requested(self, tx: Tx, event: PromotionRequested) -> None:
        data = event.data
        if await self._version(tx, data.name, data.version) is None:
            return
        request = Request(data.actor, data.to_stage, data.reason, event.id,
                          data.imported_from.model_dump(mode="json") if data.imported_from is not None else None)
        await self._decide(tx, data.name, data.version, lambda model: model.request(data.version, request))

    async def _decide(self, tx: Tx, name: str, number: int,
                      command: Callable[[RegisteredModel], list[DomainEvent]]) -> None:
        """Run one of the model's commands on the batch's state, and record what it decided. A
        crown whose artifact nobody checked yet sends the batch to check it (`NeedsIO`)."""
        models = _models(tx)

        def verdict(number: int) -> Verdict | None:
            row = models.get(name, number)
            return tx.batch.facts.get(_integrity_key(row)) if row is not None else None

        model = models.model(name, number, self.policy.rule_for(name), self.policy.revision, verdict)
        try:
            decided = command(model)
        except VerdictNeeded as needed:
            row = models.get(name, needed.version)
            assert row is not None
            raise NeedsIO(await self._verify_outside(tx, row), f"integrity of {name} v{needed.version}") from None
        for happened in decided:
            self._record(tx, name, happened)

    def _record(self, tx: Tx, name: str, happened: DomainEvent) -> None:
        """One thing the model decided, as the events, audit records and rows that say so."""
        models = _models(tx)
        if isinstance(happened, Decided):
            tx.batch.committed.append(metrics.PROMOTION_DECISIONS.labels(happened.outcome).inc)  # counted once
            return
        row = models.get(name, happened.version)
        assert row is not None
        match happened:
            case Promoted():
                self._promote(tx, row, happened)
            case Demoted():
                self._demote(tx, row, happened)
            case Noted():
                tx.audit(happened.ACTION, name=name, version=row.version, from_stage=happened.from_stage,
                         to_stage=happened.to_stage, actor=happened.actor, reason=happened.reason,
                         evidence=happened.evidence, correlation=row.correlation_id)
            case Validated():
                models.update(name, row.version, validated=True)
            case Blocked(blocked=blocked):
                models.update(name, row.version, blocked=blocked)
            case Quarantined(stage=stage, message=message, evidence=evidence):
                models.update(name, row.version, blocked="quarantined")
                tx.emit(ModelRejected, ModelRejectedData(name=name, version=row.version, reasons=[
                    Reason(code="checksum_mismatch", message=message)]), correlation=row.correlation_id)
                tx.audit("quarantined", name=name, version=row.version, from_stage=stage, to_stage=stage,
                         reason=message, evidence=evidence, correlation=row.correlation_id)
            case ApprovalRecorded():
                models.add_approval(name=name, version=row.version, to_stage=happened.to_stage,
                                    actor=happened.actor, reason=happened.reason, event_id=happened.request_id)
            case ApprovalsCleared(to_stage=to_stage):
                models.clear_approvals(name, row.version, to_stage)
            case ImportWaiting(pending=pending):
                models.set_pending_import(name, row.version, pending)
            case ImportSettled():
                models.clear_pending_import(name, row.version)
            case _:  # a new kind of domain event must say here what it records
                assert_never(happened)

    def _promote(self, tx: Tx, row: VersionRow, up: Promoted) -> None:
        """Up a stage: the signed event, the new stage with its history, the audit record."""
        revision = self.policy.revision
        event = tx.emit(ModelPromoted, ModelPromotedData(
            name=row.name, version=row.version, from_stage=up.from_stage, to_stage=up.to_stage, reason=up.reason,
            policy_revision=revision, evidence=up.evidence, previous_champion=up.previous_champion,
            attestation=self._attestation(row, up)), correlation=row.correlation_id)
        fields: dict[str, Any] = {"superseded_at": None}
        if up.validated:
            fields["validated"] = True
        if up.to_stage == "production":
            fields["previous_champion"] = up.previous_champion
        _models(tx).set_stage(row, up.to_stage, reason=up.reason, actor=up.actor or tx.source, event_id=event.id,
                              evidence=up.evidence, at=event.time, **fields)
        tx.audit("promoted", name=row.name, version=row.version, from_stage=up.from_stage, to_stage=up.to_stage,
                 actor=up.actor, reason=up.reason,
                 evidence={**up.evidence, "previous_champion": up.previous_champion, "policy_revision": revision},
                 correlation=row.correlation_id)

    def _attestation(self, row: VersionRow, up: Promoted) -> Attestation:
        """The signed statement a deployment system can keep with the artifact (shared/attestation.py),
        signed with this service's event key: one key, one keyring."""
        return Attestation.model_validate(sign_statement(signing_key(SERVICE), promotion_statement(
            name=row.name, version=row.version, from_stage=up.from_stage, to_stage=up.to_stage, reason=up.reason,
            artifact_uri=row.artifact_uri, sha256=row.sha256, policy_revision=self.policy.revision,
            evidence=up.evidence, previous_champion=up.previous_champion, promoted_at=datetime.now(UTC))))

    def _demote(self, tx: Tx, row: VersionRow, down: Demoted) -> None:
        event = tx.emit(ModelDemoted, ModelDemotedData(name=row.name, version=row.version, from_stage=down.from_stage,
                                                       to_stage=down.to_stage, reason=down.reason,
                                                       evidence=down.evidence), correlation=row.correlation_id)
        fields: dict[str, Any] = {}
        if down.superseded:
            fields["superseded_at"] = event.time
        if down.blocked is not None:
            fields["blocked"] = down.blocked
        stage = "none" if down.to_stage == "archived" else down.to_stage  # archived once archival has moved it
        _models(tx).set_stage(row, stage, reason=down.reason, actor=down.actor or tx.source, event_id=event.id,
                              at=event.time, evidence=down.evidence, **fields)
        tx.audit("demoted", name=row.name, version=row.version, from_stage=down.from_stage, to_stage=down.to_stage,
                 actor=down.actor, reason=down.reason, evidence=down.evidence, correlation=row.correlation_id)

    async def _verify_outside(self, tx: Tx, row: VersionRow) -> Callable[[Batch], Awaitable[None]]:
        """The check of `row` and of every other version this batch may crown
        (`PromotionBatch.may_crown`): one rollback of the transaction for the batch, not one
        per promotion."""
        models = _models(tx)
        candidates = {_integrity_key(v): v for v in (row, *models.may_crown())}
        manifests = {key: await models.manifest(v.name, v.version) if is_directory_uri(v.artifact_uri) else None
                     for key, v in candidates.items()}
        # Each check joins its version's trace: this handler's for `row`, the remembered one else.
        here = otel_context.get_current()
        checks = {key: _Check(v.artifact_uri, v.sha256, manifests[key],
                              here if key == _integrity_key(row) else
                              telemetry.parent_from((), fallback=models.traceparent(v.name, v.version)) or here)
                  for key, v in candidates.items()}
        # And the versions the batch's later events introduce, which it may crown too: else
        # each would cost the batch one more rolled-back attempt.
        for event in models.events:
            if event.topic == "model.ingested":
                key, check = _registration_check(event, here)
                checks.setdefault(key, check)

        async def fetch(batch: Batch) -> None:
            await self._verify(batch, checks)

        return fetch


@dataclass(frozen=True)
class _Check:
    """An integrity check to run: the stored artifact, what it must hash to, whose trace."""

    uri: str
    sha256: str
    manifest: str | None
    parent: Any


def _may_crown(event: CloudEvent[Any]) -> bool:
    """An event that may move its own version to production: a QA result outside production
    (the policy's gate) or an approver's request for production."""
    if event.topic == "metrics.evaluated":
        return bool(event.data.environment != "production")
    return event.topic == "promotion.requested" and event.data.to_stage == "production"


# What an integrity check needs of a stored version (a directory's manifest only for directories).
_CHECKED = """name, version, artifact_uri, sha256, traceparent,
              CASE WHEN artifact_uri LIKE '%/' THEN manifest END AS manifest"""


def _registration_check(event: CloudEvent[Any], parent: Any) -> tuple[tuple[Any, ...], _Check]:
    """The integrity check of the version a `model.ingested` introduces, as it will be stored."""
    data = event.data
    artifact = data.artifact
    return ("integrity", data.name, data.version, artifact.uri, artifact.sha256), \
        _Check(artifact.uri, artifact.sha256, _manifest_of(artifact), parent)


def _manifest_of(artifact: ArtifactRef) -> str | None:
    """A directory artifact's canonical manifest, as stored beside its version; None for a file."""
    return None if artifact.files is None else canonical_manifest(artifact.manifest() or []).decode()


def _integrity_key(row: VersionRow) -> tuple[Any, ...]:
    """A verdict holds for these bytes at this place only."""
    return ("integrity", row.name, row.version, row.artifact_uri, row.sha256)


def _models(tx: Tx) -> PromotionBatch:
    """The batch's models, as `Promotion.batch_scope` loaded them."""
    models: PromotionBatch = tx.batch.scope
    return models


def build(resources: Resources) -> ServiceHandlers:
    promotion = Promotion(resources)
    grace = timedelta(seconds=resources.settings.early_event_grace_seconds)
    async def version_trace(batch: Batch, event: Any) -> str | None:
        version = getattr(event.data, "version", None)
        models: PromotionBatch = batch.scope
        return models.traceparent(event.data.name, version) if version is not None else None

    return ServiceHandlers(SERVICE, prepare=promotion.prepare, trace_fallback=version_trace,
                           batch_scope=promotion.batch_scope, background=(
        lambda: early.expire_forever(resources.pool, SERVICE, grace, resources.consumer_lag),
    ), handlers={
        "model.ingested": promotion.on_ingested,
        "model.validated": promotion.on_validated,
        "model.rejected": promotion.on_rejected,
        "metrics.evaluated": promotion.on_evaluated,
        "promotion.requested": promotion.on_requested,
        "model.archived": promotion.on_archived,
        "model.restored": promotion.on_restored,
    })


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, build)
