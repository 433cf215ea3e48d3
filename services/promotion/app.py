"""promotion: validated versions to staging, staging to production on evidence, rollbacks,
and manual requests from approvers.

Consumes `model.ingested` (what exists), `model.validated`, `model.rejected`,
`metrics.evaluated`, `promotion.requested` and `model.archived`; emits `model.promoted` and
`model.demoted`. Every decision about a model runs under that model's lock, so two instances
(or a rebalance) never make two champions; the database's partial unique index backs it up.

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
from typing import Any, Literal, cast

from opentelemetry import context as otel_context

from shared import metrics, telemetry
from shared.attestation import promotion_statement, sign_statement
from shared.consumer import Batch, NeedsIO, ServiceHandlers, TraceParents, Tx
from shared.domain.promotion import (
    Champion,
    Result,
    authored_evaluation,
    choose_restore,
    decide_import,
    decide_late_rejection,
    decide_manual,
    decide_promotion,
    decide_rollback,
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
    Stage,
)
from shared.manifest import canonical_manifest, is_directory_uri
from shared.policy import Rule
from shared.runtime import Resources, ServiceApp
from shared.settings import Settings
from shared.signing import signing_key

from . import early
from .integrity import Verdict, verify_artifact
from .store import VersionRow
from .unit_of_work import IMPORT_CLAIMED, PendingImport, PromotionBatch

# Why a version moves up (ModelPromotedData.reason).
PromotionReason = Literal["policy", "manual", "rollback"]

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
        (`_artifact_intact`)."""
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
                *_columns(asked), *_columns(staged), *_columns(arriving))
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
            # Only keeps it out of automatic staging until an approver's import request (maybe
            # among `waited`, replayed next) says which stage it had; a pipeline's marker alone
            # can never move a version up.
            _models(tx).set_pending_import(data.name, data.version, PendingImport(
                IMPORT_CLAIMED, "", "", data.imported_from.model_dump(mode="json"), event.id))
        if waited:
            await early.replay(tx, data.name, waited, self.waits_for_version)

    async def on_rejected(self, tx: Tx, event: ModelRejected) -> None:
        """Validation refused an ingested version: it may never be promoted, not even by hand,
        and if it already moved up (a late failure) it comes down at once.
        (Ingest's rejections concern versions that never reached us; our own we have applied.)"""
        if event.data.version is None or event.source != "modelreg/validation":
            return
        row = await self._version(tx, event.data.name, event.data.version)
        if row is None:  # held
            return
        _models(tx).update(row.name, row.version, blocked="rejected")
        if (pending := _models(tx).pending_import(row.name, row.version)) is not None:
            if pending.to_stage == IMPORT_CLAIMED:
                _models(tx).clear_pending_import(row.name, row.version)
            else:
                await self._import(tx, _models(tx).get(row.name, row.version) or row, pending)
        why = "; ".join(f"{r.code}: {r.message}" for r in event.data.reasons)
        await self._take_down(tx, row, "rejected", why, {"reasons": [r.model_dump() for r in event.data.reasons],
                                                         "rejected_by": event.source})

    async def _take_down(self, tx: Tx, row: VersionRow, blocked: str, why: str, evidence: dict[str, Any]) -> None:
        """A version found unsafe or altered after it moved up leaves staging or production at
        once; a champion's predecessor is restored."""
        decision = decide_late_rejection(row.stage, why)
        if not decision.demote:
            return
        _count(tx, f"demoted_{blocked}")
        evidence = {**evidence, "detail": decision.detail}
        await self._demote(tx, row, "none", reason=blocked, evidence=evidence, blocked=blocked)
        if decision.restore:
            await self._restore(tx, row, evidence={**evidence, "policy_revision": self.policy.revision},
                                nobody=f"{row.name} v{row.version} was {blocked} in production and no earlier "
                                       "version is restorable: the model has no champion now")

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

    # -- policy ---------------------------------------------------------------------------

    async def on_validated(self, tx: Tx, event: ModelValidated) -> None:
        data = event.data
        row = await self._version(tx, data.name, data.version)
        if row is None:
            return
        if (pending := _models(tx).pending_import(row.name, row.version)) is not None:
            # An imported version takes the stage it had, not the policy's first step.
            validated = _models(tx).update(row.name, row.version, validated=True)
            assert validated is not None
            if pending.to_stage != IMPORT_CLAIMED:
                await self._import(tx, validated, pending)
            return
        rule = self.policy.rule_for(row.name)
        if rule.auto_staging and row.stage == "none" and row.blocked is None:
            staged = await self._move(tx, row, "staging", reason="policy", validated=True,
                                      evidence={"checks": [c.model_dump() for c in data.checks]})
            await self._consider(tx, staged, rule)
        else:
            _models(tx).update(row.name, row.version, validated=True)

    async def on_evaluated(self, tx: Tx, event: MetricsEvaluated) -> None:
        data = event.data
        row = await self._version(tx, data.name, data.version)
        if row is None:
            return
        _models(tx).add_evaluation(
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
        rule = self.policy.rule_for(row.name)
        ignored = authored_evaluation(rule, evaluator=data.evaluator, registered_by=row.registered_by,
                                      environment=data.environment)
        if ignored is not None:
            _count(tx, "ignored_evaluation")
            tx.audit("ignored_evaluation", name=row.name, version=row.version, from_stage=row.stage,
                     to_stage=row.stage, actor=data.evaluator, reason=ignored,
                     evidence={"suite": data.suite, "evaluator": data.evaluator, "registered_by": row.registered_by,
                               "policy_revision": self.policy.revision}, correlation=row.correlation_id)
        if data.environment == "production":
            if row.stage == "production":
                result = Result(data.suite, data.environment, data.metrics, data.passed, 0)
                await self._maybe_roll_back(tx, row, rule, result)
            return
        if row.stage == "staging":
            await self._consider(tx, row, rule)

    async def _consider(self, tx: Tx, row: VersionRow, rule: Rule) -> None:
        name, version = row.name, row.version
        results = _models(tx).results(name, version)
        current = _models(tx).champion(name)
        incumbent = Champion(current.version, _models(tx).results(name, current.version)) \
            if current is not None else None
        decision = decide_promotion(row.stage, row.blocked, rule, results, incumbent, row.registered_by)
        evidence = {**decision.evidence(), "policy_revision": self.policy.revision}
        if not decision.promote and not results:
            return  # nothing measured yet: waiting is not a decision worth recording
        if not decision.promote:
            _count(tx, "held")
            tx.audit("held", name=name, version=version, from_stage=row.stage, to_stage=row.stage,
                     reason=decision.reason(), evidence=evidence, correlation=row.correlation_id)
            return
        if await self._to_production(tx, row, current, reason="policy", evidence=evidence):
            _count(tx, "promoted")

    async def _to_production(self, tx: Tx, row: VersionRow, current: VersionRow | None, *, reason: PromotionReason,
                             evidence: dict[str, Any], actor: str | None = None,
                             replaced: int | None = None) -> bool:
        """Verify the stored artifact, retire the champion, crown `row`. False if quarantined."""
        if not await self._artifact_intact(tx, row):
            return False
        if current is not None and current.version != row.version:
            demote_reason = "rollback" if reason == "rollback" else "superseded"
            await self._demote(tx, current, "none", reason=demote_reason,
                               evidence={"superseded_by": row.version} if demote_reason == "superseded" else {},
                               superseded=demote_reason == "superseded")
        await self._move(tx, row, "production", reason=reason, evidence=evidence, actor=actor,
                         previous_champion=current.version if current else replaced)
        return True

    async def _artifact_intact(self, tx: Tx, row: VersionRow) -> bool:
        """Before any move to production: the stored bytes must still hash to the record (a
        directory's files, each, to its manifest). The verdict comes from outside the
        transaction (`_verify_outside`); without one, the batch asks for it."""
        verdict: Verdict | None = tx.batch.facts.get(_integrity_key(row))
        if verdict is None:
            raise NeedsIO(await self._verify_outside(tx, row), f"integrity of {row.name} v{row.version}")
        if verdict.intact:
            return True
        message = verdict.message
        _count(tx, "quarantined")
        _models(tx).update(row.name, row.version, blocked="quarantined")
        tx.emit(ModelRejected, ModelRejectedData(name=row.name, version=row.version,
                                                 reasons=[Reason(code="checksum_mismatch", message=message)]),
                correlation=row.correlation_id)
        tx.audit("quarantined", name=row.name, version=row.version, from_stage=row.stage, to_stage=row.stage,
                 reason=message, evidence=verdict.evidence, correlation=row.correlation_id)
        await self._take_down(tx, row, "quarantined", message, verdict.evidence.as_dict())
        return False

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

    async def _maybe_roll_back(self, tx: Tx, champion_row: VersionRow, rule: Rule, result: Result) -> None:
        broken = decide_rollback(rule, result)
        if not broken:
            return
        _count(tx, "rolled_back")
        evidence = {"broken": [g.as_dict() for g in broken], "suite": result.suite,
                    "policy_revision": self.policy.revision}
        await self._demote(tx, champion_row, "none", reason="rollback", evidence=evidence, blocked="rolled_back")
        await self._restore(tx, champion_row, evidence=evidence,
                            nobody="production metrics broke the rollback thresholds and no earlier version is "
                                   "restorable: the model has no champion now")

    async def _restore(self, tx: Tx, fallen: VersionRow, *, evidence: dict[str, Any], nobody: str) -> None:
        """Crown the champion `fallen` replaced (or the latest superseded one), as a rollback."""
        target = choose_restore(_models(tx).restorable(fallen.name), fallen.previous_champion)
        if target is None:
            tx.audit("rollback_without_restore", name=fallen.name, version=fallen.version, reason=nobody,
                     evidence=evidence, correlation=fallen.correlation_id)
            return
        restored = _models(tx).get(fallen.name, target)
        assert restored is not None
        await self._to_production(tx, restored, None, reason="rollback",
                                  evidence={**evidence, "rolled_back": fallen.version}, replaced=fallen.version)

    # -- people ---------------------------------------------------------------------------

    async def on_requested(self, tx: Tx, event: PromotionRequested) -> None:
        data = event.data
        row = await self._version(tx, data.name, data.version)
        if row is None:
            return
        if data.imported_from is not None:
            await self._import(tx, row, PendingImport(data.to_stage, data.actor, data.reason,
                                                      data.imported_from.model_dump(mode="json"), event.id))
            return
        rule = self.policy.rule_for(row.name)
        decision = decide_manual(rule, actor=data.actor, to_stage=data.to_stage, registered_by=row.registered_by,
                                 stage=row.stage, blocked=row.blocked, validated=row.validated,
                                 approvals=_models(tx).approvals(row.name, row.version, data.to_stage))
        base = {"requested_by": data.actor, "request_reason": data.reason, "to_stage": data.to_stage}
        if decision.outcome == "elsewhere":
            return
        _count(tx, f"manual_{decision.outcome}")
        if decision.outcome == "refuse":
            tx.audit("promotion_refused", name=row.name, version=row.version, from_stage=row.stage,
                     to_stage=data.to_stage, actor=data.actor, reason=decision.detail, evidence=base,
                     correlation=row.correlation_id)
            return
        _models(tx).add_approval(name=row.name, version=row.version, to_stage=data.to_stage,
                                actor=data.actor, reason=data.reason, event_id=event.id)
        if decision.outcome == "pending":
            tx.audit("approval_recorded", name=row.name, version=row.version, from_stage=row.stage,
                     to_stage=data.to_stage, actor=data.actor, reason=decision.detail,
                     evidence={**base, "approvers": list(decision.approvers), "needed": decision.needed},
                     correlation=row.correlation_id)
            return
        evidence = {**base, "approvers": list(decision.approvers), "policy_revision": self.policy.revision}
        actor = data.actor
        if data.to_stage == "production":
            done = await self._to_production(tx, row, _models(tx).champion(row.name), reason="manual",
                                             evidence=evidence, actor=actor)
        elif data.to_stage == "staging" and row.stage == "none":
            await self._move(tx, row, "staging", reason="manual", evidence=evidence, actor=actor)
            done = True
        else:  # down: to none, or to archived (archival moves the artifact)
            await self._demote(tx, row, data.to_stage, reason="manual", evidence=evidence, actor=actor)
            done = True
        if done:
            _models(tx).clear_approvals(row.name, row.version, data.to_stage)

    async def _import(self, tx: Tx, row: VersionRow, request: PendingImport) -> None:
        """Reproduce the stage a version had in the registry it was imported from, once it
        passed validation, without the policy's gates (`decide_import` says who may ask)."""
        to_stage = cast(Stage, request.to_stage)  # callers hand an IMPORT_CLAIMED marker elsewhere
        decision = decide_import(self.policy.rule_for(row.name), actor=request.actor, to_stage=to_stage,
                                 stage=row.stage, validated=row.validated, blocked=row.blocked,
                                 registered_by=row.registered_by)
        evidence = {"imported_from": request.imported_from, "requested_by": request.actor,
                    "request_reason": request.reason, "to_stage": to_stage, "approvers": [request.actor]}
        if decision.outcome == "wait":
            _models(tx).set_pending_import(row.name, row.version, request)
            return
        _models(tx).clear_pending_import(row.name, row.version)
        _count(tx, f"import_{decision.outcome}")
        if decision.outcome == "refuse":
            tx.audit("import_refused", name=row.name, version=row.version, from_stage=row.stage,
                     to_stage=to_stage, actor=request.actor, reason=decision.detail, evidence=evidence,
                     correlation=row.correlation_id)
            return
        if to_stage == "production" and row.stage != "production":
            if not await self._to_production(tx, row, _models(tx).champion(row.name), reason="manual",
                                             evidence=evidence, actor=request.actor):
                return  # quarantined: the stored bytes are not the ones registered
        elif to_stage == "staging" and row.stage == "none":
            await self._move(tx, row, "staging", reason="manual", evidence=evidence, actor=request.actor)
        elif to_stage != row.stage:
            await self._demote(tx, row, to_stage, reason="manual", evidence=evidence, actor=request.actor)
        source = request.imported_from
        tx.audit("imported", name=row.name, version=row.version, from_stage=row.stage, to_stage=to_stage,
                 actor=request.actor,
                 reason=f"{source.get('system')} {source.get('model')} v{source.get('version')}: {decision.detail}",
                 evidence={**evidence, "policy_revision": self.policy.revision}, correlation=row.correlation_id)

    # -- stage changes ----------------------------------------------------------------------

    async def _move(self, tx: Tx, row: VersionRow, to_stage: Stage, *, reason: PromotionReason,
                    evidence: dict[str, Any], actor: str | None = None, previous_champion: int | None = None,
                    **columns: Any) -> VersionRow:
        """Up a stage: the event, the new stage with its history, the audit record; returns
        the row as it now is."""
        event = tx.emit(ModelPromoted, ModelPromotedData(
            name=row.name, version=row.version, from_stage=row.stage, to_stage=to_stage, reason=reason,
            policy_revision=self.policy.revision, evidence=evidence, previous_champion=previous_champion,
            attestation=self._attestation(row, to_stage, reason, evidence, previous_champion)),
            correlation=row.correlation_id)
        fields: dict[str, Any] = {"superseded_at": None, **columns}
        if to_stage == "production":
            fields["previous_champion"] = previous_champion
        moved = _models(tx).set_stage(row, to_stage, reason=reason, actor=actor or tx.source, event_id=event.id,
                                     evidence=evidence, at=event.time, **fields)
        tx.audit("promoted", name=row.name, version=row.version, from_stage=row.stage, to_stage=to_stage,
                 actor=actor, reason=reason,
                 evidence={**evidence, "previous_champion": previous_champion,
                           "policy_revision": self.policy.revision}, correlation=row.correlation_id)
        return moved

    def _attestation(self, row: VersionRow, to_stage: Stage, reason: str, evidence: dict[str, Any],
                     previous_champion: int | None) -> Attestation:
        """The signed statement a deployment system can keep with the artifact (shared/attestation.py),
        signed with this service's event key: one key, one keyring."""
        return Attestation.model_validate(sign_statement(signing_key(SERVICE), promotion_statement(
            name=row.name, version=row.version, from_stage=row.stage, to_stage=to_stage, reason=reason,
            artifact_uri=row.artifact_uri, sha256=row.sha256, policy_revision=self.policy.revision,
            evidence=evidence, previous_champion=previous_champion, promoted_at=datetime.now(UTC))))

    async def _demote(self, tx: Tx, row: VersionRow, to_stage: Stage, *, reason: str, evidence: dict[str, Any],
                      actor: str | None = None, superseded: bool = False, blocked: str | None = None) -> None:
        event = tx.emit(ModelDemoted, ModelDemotedData(name=row.name, version=row.version, from_stage=row.stage,
                                                       to_stage=to_stage, reason=reason, evidence=evidence),
                        correlation=row.correlation_id)
        fields: dict[str, Any] = {}
        if superseded:
            fields["superseded_at"] = event.time
        if blocked is not None:
            fields["blocked"] = blocked
        stage = "none" if to_stage == "archived" else to_stage  # archived once archival has moved it
        _models(tx).set_stage(row, stage, reason=reason, actor=actor or tx.source, event_id=event.id, at=event.time,
                              evidence=evidence, **fields)
        tx.audit("demoted", name=row.name, version=row.version, from_stage=row.stage, to_stage=to_stage,
                 actor=actor, reason=reason, evidence=evidence, correlation=row.correlation_id)


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


def _columns(events: dict[tuple[str, int], Any]) -> tuple[list[str], list[int]]:
    return [name for name, _ in events], [version for _, version in events]


def _integrity_key(row: VersionRow) -> tuple[Any, ...]:
    """A verdict holds for these bytes at this place only."""
    return ("integrity", row.name, row.version, row.artifact_uri, row.sha256)


def _count(tx: Tx, outcome: str) -> None:
    """A decision, counted once its batch commits (a batch decided twice counts once)."""
    tx.batch.committed.append(metrics.PROMOTION_DECISIONS.labels(outcome).inc)


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
