"""A registered model as promotion decides about it: its versions, its champion and the
requests waiting on them (approvals, imports).

Each command takes one fact (a validation, a QA result, a rejection, a person's request) and
returns the domain events it leads to, in order: moves up and down, holds, quarantines,
refusals. The model changes its own state as it goes, so one fact's consequences see each
other (a crown first retires the champion; a rollback restores the champion's predecessor).
Nothing here does I/O: the promotion service loads a model, calls one command, and turns the
events into emitted events, audit records and rows; the API's `explain` and the policy dry-run
ask the same model (`judge`) what it would decide.

The one thing a decision needs from outside is whether a version's stored bytes are still
the registered ones, before it is crowned: the model asks its `verdicts`, and raises
`VerdictNeeded` when there is none yet (the service then checks the artifact, outside any
transaction, and asks again).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final, Literal, Protocol

from shared.events import Stage
from shared.policy import Rule

from .promotion import (
    Champion,
    Decision,
    Gate,
    Restorable,
    Result,
    authored_evaluation,
    choose_restore,
    decide_import,
    decide_late_rejection,
    decide_manual,
    decide_promotion,
    decide_rollback,
)

# Why a version moves up (model.promoted's `reason`).
PromotionReason = Literal["policy", "manual", "rollback"]

# A registration's import marker, before any approver asked for a stage.
IMPORT_CLAIMED: Final = "claimed"


@dataclass(frozen=True)
class Request:
    """A person's request to move a version (`promotion.requested`); `id` names the event it
    came in, so that what it leaves behind (an approval, a waiting import) can be traced to it."""

    actor: str
    to_stage: Stage
    reason: str
    id: uuid.UUID
    imported_from: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PendingImport:
    """An approver's import request (`modelreg import mlflow`) waiting for validation, or
    (to_stage IMPORT_CLAIMED, no actor) a registration's unconfirmed import marker."""

    to_stage: Stage | Literal["claimed"]
    actor: str
    reason: str
    imported_from: dict[str, Any]
    event_id: uuid.UUID


class IntegrityVerdict(Protocol):
    """Whether a version's stored bytes are the registered ones (promotion's integrity check)."""

    @property
    def intact(self) -> bool: ...
    @property
    def message(self) -> str: ...
    @property
    def evidence(self) -> Any: ...


class VerdictNeeded(Exception):
    """A crown needs the integrity verdict of a version nobody has checked yet."""

    def __init__(self, version: int) -> None:
        super().__init__(f"the integrity of v{version} is not known yet")
        self.version = version


@dataclass
class Version:
    """One version as the model's decisions see it. `superseded` orders the versions a newer
    champion replaced (newest highest; None: not superseded), the rollback targets."""

    number: int
    stage: Stage
    validated: bool = False
    blocked: str | None = None
    registered_by: str | None = None
    previous_champion: int | None = None
    superseded: int | None = None
    results: list[Result] = field(default_factory=list)
    approvals: dict[str, frozenset[str]] = field(default_factory=dict)  # to_stage -> approvers
    pending_import: PendingImport | None = None


# -- what a command decides ---------------------------------------------------------------------


@dataclass(frozen=True)
class Promoted:
    """Up a stage (to staging or production)."""

    version: int
    from_stage: Stage
    to_stage: Stage
    reason: PromotionReason
    evidence: dict[str, Any]
    actor: str | None = None
    previous_champion: int | None = None
    validated: bool = False  # the move also records that the version passed validation


@dataclass(frozen=True)
class Demoted:
    """Down: to none, or to archived (stored as none until archival has moved the artifact)."""

    version: int
    from_stage: Stage
    to_stage: Stage
    reason: str
    evidence: dict[str, Any]
    actor: str | None = None
    superseded: bool = False  # a newer champion replaced it: a rollback target from now on
    blocked: str | None = None  # it may never be promoted again, and why


@dataclass(frozen=True)
class Validated:
    """The version passed validation (and stays where it is)."""

    version: int


@dataclass(frozen=True)
class Blocked:
    """The version may never be promoted again (`blocked`: rejected, quarantined)."""

    version: int
    blocked: str


@dataclass(frozen=True)
class Quarantined:
    """The stored bytes are not the registered ones: the version is blocked, and rejected for all to see."""

    version: int
    stage: Stage
    message: str
    evidence: Any


@dataclass(frozen=True)
class Noted:
    """A decision that moves nothing and only goes on the record: the audit record `ACTION`."""

    ACTION: ClassVar[str]
    version: int
    from_stage: Stage | None
    to_stage: Stage | None
    actor: str | None
    reason: str
    evidence: dict[str, Any]


class Held(Noted):
    """Still in staging: a gate does not hold."""

    ACTION = "held"


class EvaluationIgnored(Noted):
    """A QA result that does not count towards promotion (its evaluator registered the version)."""

    ACTION = "ignored_evaluation"


class NoRestore(Noted):
    """A champion fell and no earlier version can be restored: the model has no champion."""

    ACTION = "rollback_without_restore"


class RequestRefused(Noted):
    ACTION = "promotion_refused"


class ImportRefused(Noted):
    ACTION = "import_refused"


class ApprovalPending(Noted):
    """Votes recorded, not enough of them yet."""

    ACTION = "approval_recorded"


class Imported(Noted):
    """The stage the version had in the registry it came from, reproduced here."""

    ACTION = "imported"


@dataclass(frozen=True)
class ApprovalRecorded:
    """An approver's vote (for the move `request_id` asked), kept until the move happens."""

    version: int
    to_stage: Stage
    actor: str
    reason: str
    request_id: uuid.UUID


@dataclass(frozen=True)
class ApprovalsCleared:
    """The move was made: its votes are spent."""

    version: int
    to_stage: Stage


@dataclass(frozen=True)
class ImportWaiting:
    """An import request (or a registration's import marker) waits for validation."""

    version: int
    pending: PendingImport


@dataclass(frozen=True)
class ImportSettled:
    """The version's waiting import was applied, refused or dropped."""

    version: int


@dataclass(frozen=True)
class Decided:
    """A decision of this kind was taken (for the decision counters)."""

    outcome: str


DomainEvent = (Promoted | Demoted | Noted | Validated | Blocked | Quarantined | ApprovalRecorded | ApprovalsCleared
               | ImportWaiting | ImportSettled | Decided)


def restore_target(versions: Iterable[Version], previous_champion: int | None) -> int | None:
    """The version a fallen champion's rollback restores (`choose_restore`): among those a newer
    champion superseded and nothing blocked since."""
    candidates = [Restorable(v.number, v.superseded) for v in versions
                  if v.superseded is not None and is_rollback_target(v.stage, v.superseded, v.blocked)]
    return choose_restore(candidates, previous_champion)


def is_rollback_target(stage: str, superseded: object | None, blocked: str | None) -> bool:
    """A version a rollback may restore: a newer champion superseded it, and nothing since has
    moved or blocked it."""
    return stage == "none" and superseded is not None and blocked is None


def _no_verdicts(version: int) -> IntegrityVerdict | None:
    return None


class RegisteredModel:
    """One model's versions (those a decision may touch: the ones in question, the champion,
    its rollback targets) under one policy rule. A command that raises (`VerdictNeeded`) leaves
    the model half-changed: decide again on a model built afresh (the service does)."""

    def __init__(self, name: str, rule: Rule, revision: str, versions: Iterable[Version],
                 verdicts: Callable[[int], IntegrityVerdict | None] = _no_verdicts) -> None:
        self.name = name
        self.rule = rule
        self.revision = revision
        self.versions = {v.number: replace(v, results=list(v.results), approvals=dict(v.approvals))
                         for v in versions}
        self._verdicts = verdicts
        self._events: list[DomainEvent] = []
        self._clock = max((v.superseded or 0 for v in self.versions.values()), default=0)

    # -- questions --------------------------------------------------------------------------

    @property
    def champion(self) -> Version | None:
        return next((v for v in self.versions.values() if v.stage == "production"), None)

    def judge(self, number: int) -> Decision:
        """Every gate between staging and production for this version, against the champion
        (a champion is judged against no one), and whether the policy would promote it now."""
        version = self.versions[number]
        current = next((v for v in self.versions.values() if v.stage == "production" and v.number != number), None)
        rival = Champion(current.number, current.results) if current is not None else None
        return decide_promotion(version.stage, version.blocked, self.rule, version.results, rival,
                                version.registered_by)

    def rollback_gates(self, result: Result) -> tuple[Gate, ...]:
        """The rollback thresholds a production result breaks (empty: the champion stays)."""
        return decide_rollback(self.rule, result)

    # -- commands -----------------------------------------------------------------------------

    def validate(self, number: int, evidence: dict[str, Any]) -> list[DomainEvent]:
        """Validation passed: the policy's first step (staging), then its gates, at once (QA
        results may have come first); an imported version takes the stage it had instead."""
        version = self.versions[number]
        if (pending := version.pending_import) is not None:
            version.validated = True
            self._events.append(Validated(number))
            if pending.to_stage != IMPORT_CLAIMED:
                self._import(version, pending)
        elif self.rule.auto_staging and version.stage == "none" and version.blocked is None:
            self._move(version, "staging", reason="policy", evidence=evidence, validated=True)
            self._consider(version)
        else:
            version.validated = True
            self._events.append(Validated(number))
        return self._take()

    def evaluate(self, number: int, result: Result) -> list[DomainEvent]:
        """A QA result (already among the version's results): a staging version may be crowned,
        a champion's production result may roll it back."""
        version = self.versions[number]
        ignored = authored_evaluation(self.rule, evaluator=result.evaluator, registered_by=version.registered_by,
                                      environment=result.environment)
        if ignored is not None:
            self._events += [Decided("ignored_evaluation"), EvaluationIgnored(
                number, version.stage, version.stage, result.evaluator, ignored,
                {"suite": result.suite, "evaluator": result.evaluator, "registered_by": version.registered_by,
                 "policy_revision": self.revision})]
        if result.environment == "production":
            if version.stage == "production":
                self._maybe_roll_back(version, result)
        elif version.stage == "staging":
            self._consider(version)
        return self._take()

    def reject(self, number: int, why: str, evidence: dict[str, Any]) -> list[DomainEvent]:
        """Validation refused the version: it may never be promoted, not even by hand, and if it
        already moved up (a late failure) it comes down at once."""
        version = self.versions[number]
        stage = version.stage
        version.blocked = "rejected"
        self._events.append(Blocked(number, "rejected"))
        if (pending := version.pending_import) is not None:
            if pending.to_stage == IMPORT_CLAIMED:
                version.pending_import = None
                self._events.append(ImportSettled(number))
            else:
                self._import(version, pending)
        self._take_down(version, stage, "rejected", why, evidence)
        return self._take()

    def request(self, number: int, request: Request) -> list[DomainEvent]:
        """An approver asks to move a version by hand (or to reproduce an imported stage)."""
        version = self.versions[number]
        if request.imported_from is not None:
            self._import(version, PendingImport(request.to_stage, request.actor, request.reason,
                                                dict(request.imported_from), request.id))
            return self._take()
        to_stage = request.to_stage
        decision = decide_manual(self.rule, actor=request.actor, to_stage=to_stage,
                                 registered_by=version.registered_by, stage=version.stage, blocked=version.blocked,
                                 validated=version.validated, approvals=version.approvals.get(to_stage, ()))
        if decision.outcome == "elsewhere":
            return self._take()
        base = {"requested_by": request.actor, "request_reason": request.reason, "to_stage": to_stage}
        self._events.append(Decided(f"manual_{decision.outcome}"))
        if decision.outcome == "refuse":
            self._events.append(RequestRefused(number, version.stage, to_stage, request.actor, decision.detail, base))
            return self._take()
        version.approvals[to_stage] = frozenset(version.approvals.get(to_stage, frozenset()) | {request.actor})
        self._events.append(ApprovalRecorded(number, to_stage, request.actor, request.reason, request.id))
        if decision.outcome == "pending":
            self._events.append(ApprovalPending(
                number, version.stage, to_stage, request.actor, decision.detail,
                {**base, "approvers": list(decision.approvers), "needed": decision.needed}))
            return self._take()
        evidence = {**base, "approvers": list(decision.approvers), "policy_revision": self.revision}
        if to_stage == "production":
            done = self._crown(version, reason="manual", evidence=evidence, actor=request.actor)
        elif to_stage == "staging" and version.stage == "none":
            self._move(version, "staging", reason="manual", evidence=evidence, actor=request.actor)
            done = True
        else:  # down: to none, or to archived (archival moves the artifact)
            self._demote(version, to_stage, reason="manual", evidence=evidence, actor=request.actor)
            done = True
        if done:
            version.approvals.pop(to_stage, None)
            self._events.append(ApprovalsCleared(number, to_stage))
        return self._take()

    def claim_import(self, number: int, imported_from: Mapping[str, Any], event_id: uuid.UUID) -> list[DomainEvent]:
        """A registration says the version comes from another registry: it stays out of
        automatic staging until an approver's import request says which stage it had (a
        pipeline's marker alone can never move a version up)."""
        version = self.versions[number]
        version.pending_import = PendingImport(IMPORT_CLAIMED, "", "", dict(imported_from), event_id)
        self._events.append(ImportWaiting(number, version.pending_import))
        return self._take()

    # -- how decisions unfold ---------------------------------------------------------------------

    def _take(self) -> list[DomainEvent]:
        events, self._events = self._events, []
        return events

    def _consider(self, version: Version) -> None:
        decision = self.judge(version.number)
        evidence = {**decision.evidence(), "policy_revision": self.revision}
        if not decision.promote and not version.results:
            return  # nothing measured yet: waiting is not a decision worth recording
        if not decision.promote:
            self._events += [Decided("held"),
                             Held(version.number, version.stage, version.stage, None, decision.reason(), evidence)]
            return
        if self._crown(version, reason="policy", evidence=evidence):
            self._events.append(Decided("promoted"))

    def _maybe_roll_back(self, champion: Version, result: Result) -> None:
        broken = self.rollback_gates(result)
        if not broken:
            return
        self._events.append(Decided("rolled_back"))
        evidence = {"broken": [g.as_dict() for g in broken], "suite": result.suite,
                    "policy_revision": self.revision}
        self._demote(champion, "none", reason="rollback", evidence=evidence, blocked="rolled_back")
        self._restore(champion, evidence=evidence,
                      nobody="production metrics broke the rollback thresholds and no earlier version is "
                             "restorable: the model has no champion now")

    def _take_down(self, version: Version, stage: Stage, blocked: str, why: str, evidence: dict[str, Any]) -> None:
        """A version found unsafe or altered after it moved up (from `stage`) leaves staging or
        production at once; a champion's predecessor is restored."""
        decision = decide_late_rejection(stage, why)
        if not decision.demote:
            return
        self._events.append(Decided(f"demoted_{blocked}"))
        evidence = {**evidence, "detail": decision.detail}
        self._demote(version, "none", reason=blocked, evidence=evidence, blocked=blocked)
        if decision.restore:
            self._restore(version, evidence={**evidence, "policy_revision": self.revision},
                          nobody=f"{self.name} v{version.number} was {blocked} in production and no earlier "
                                 "version is restorable: the model has no champion now")

    def _restore(self, fallen: Version, *, evidence: dict[str, Any], nobody: str) -> None:
        """Crown the champion `fallen` replaced (or the latest superseded one), as a rollback. A
        target whose stored bytes were altered is quarantined and the next one tried: a model
        is only left without a champion on the record (`NoRestore`)."""
        while (target := restore_target(self.versions.values(), fallen.previous_champion)) is not None:
            if self._crown(self.versions[target], reason="rollback",
                           evidence={**evidence, "rolled_back": fallen.number}, replaced=fallen.number):
                return
        self._events.append(NoRestore(fallen.number, None, None, None, nobody, evidence))

    def _crown(self, version: Version, *, reason: PromotionReason, evidence: dict[str, Any],
               actor: str | None = None, replaced: int | None = None) -> bool:
        """Verify the stored artifact, retire the champion, crown `version`. False if quarantined."""
        verdict = self._verdicts(version.number)
        if verdict is None:
            raise VerdictNeeded(version.number)
        if not verdict.intact:
            self._quarantine(version, verdict)
            return False
        current = self.champion
        if current is not None and current.number != version.number:
            if reason == "rollback":
                self._demote(current, "none", reason="rollback", evidence={})
            else:
                self._demote(current, "none", reason="superseded", evidence={"superseded_by": version.number},
                             superseded=True)
        self._move(version, "production", reason=reason, evidence=evidence, actor=actor,
                   previous_champion=current.number if current else replaced)
        return True

    def _quarantine(self, version: Version, verdict: IntegrityVerdict) -> None:
        stage = version.stage
        version.blocked = "quarantined"
        self._events += [Decided("quarantined"), Quarantined(version.number, stage, verdict.message,
                                                             verdict.evidence)]
        self._take_down(version, stage, "quarantined", verdict.message, verdict.evidence.as_dict())

    def _import(self, version: Version, request: PendingImport) -> None:
        """Reproduce the stage a version had in the registry it was imported from, once it
        passed validation, without the policy's gates (`decide_import` says who may ask)."""
        assert request.to_stage != IMPORT_CLAIMED, "a registration's marker is not a request"
        to_stage: Stage = request.to_stage
        decision = decide_import(self.rule, actor=request.actor, to_stage=to_stage, stage=version.stage,
                                 validated=version.validated, blocked=version.blocked,
                                 registered_by=version.registered_by)
        evidence = {"imported_from": request.imported_from, "requested_by": request.actor,
                    "request_reason": request.reason, "to_stage": to_stage, "approvers": [request.actor]}
        if decision.outcome == "wait":
            version.pending_import = request
            self._events.append(ImportWaiting(version.number, request))
            return
        version.pending_import = None
        self._events += [ImportSettled(version.number), Decided(f"import_{decision.outcome}")]
        if decision.outcome == "refuse":
            self._events.append(ImportRefused(version.number, version.stage, to_stage, request.actor,
                                              decision.detail, evidence))
            return
        stage = version.stage
        if to_stage == "production" and stage != "production":
            if not self._crown(version, reason="manual", evidence=evidence, actor=request.actor):
                return  # quarantined: the stored bytes are not the ones registered
        elif to_stage == "staging" and stage == "none":
            self._move(version, "staging", reason="manual", evidence=evidence, actor=request.actor)
        elif to_stage != stage:
            self._demote(version, to_stage, reason="manual", evidence=evidence, actor=request.actor)
        source = request.imported_from
        self._events.append(Imported(
            version.number, stage, to_stage, request.actor,
            f"{source.get('system')} {source.get('model')} v{source.get('version')}: {decision.detail}",
            {**evidence, "policy_revision": self.revision}))

    def _move(self, version: Version, to_stage: Stage, *, reason: PromotionReason, evidence: dict[str, Any],
              actor: str | None = None, previous_champion: int | None = None, validated: bool = False) -> None:
        self._events.append(Promoted(version.number, version.stage, to_stage, reason, evidence, actor,
                                     previous_champion, validated))
        version.stage = to_stage
        version.superseded = None
        if validated:
            version.validated = True
        if to_stage == "production":
            version.previous_champion = previous_champion

    def _demote(self, version: Version, to_stage: Stage, *, reason: str, evidence: dict[str, Any],
                actor: str | None = None, superseded: bool = False, blocked: str | None = None) -> None:
        self._events.append(Demoted(version.number, version.stage, to_stage, reason, evidence, actor, superseded,
                                    blocked))
        version.stage = "none" if to_stage == "archived" else to_stage  # archived once archival has moved it
        if superseded:
            self._clock += 1
            version.superseded = self._clock
        if blocked is not None:
            version.blocked = blocked
