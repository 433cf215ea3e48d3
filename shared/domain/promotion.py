"""Promotion decisions as plain functions over plain data: gates, rollback, manual requests.

Nothing here does I/O. `registered_model.RegisteredModel` applies them to one model's versions
(what follows from a decision: who is demoted, what is restored); the promotion service and the
API's `explain` and policy dry-run all ask that model, so what they show is what promotion decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.policy import Rule, Threshold


@dataclass(frozen=True)
class Result:
    """One `metrics.evaluated` as decisions see it; `seq` orders results (newest highest)."""

    suite: str
    environment: str
    metrics: Mapping[str, float]
    passed: bool | None
    seq: int
    evaluator: str | None = None  # who reported it: the token name through the API


@dataclass(frozen=True)
class Gate:
    """One condition of the policy, and whether it holds, and why."""

    gate: str
    passed: bool
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "detail": self.detail, **self.evidence}


@dataclass(frozen=True)
class Champion:
    version: int
    results: Sequence[Result]


@dataclass(frozen=True)
class Decision:
    promote: bool
    gates: tuple[Gate, ...]
    ignored: tuple[Result, ...] = ()  # results that do not count (the version's author evaluated it)

    @property
    def failing(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if not g.passed)

    def evidence(self) -> dict[str, Any]:
        evidence: dict[str, Any] = {"gates": [g.as_dict() for g in self.gates]}
        if self.ignored:
            evidence["ignored_evaluations"] = [{"suite": r.suite, "evaluator": r.evaluator, "seq": r.seq}
                                               for r in self.ignored]
        return evidence

    def reason(self) -> str:
        """Why it is held, for people: the failing gates, and the results that did not count."""
        parts = [g.detail for g in self.failing]
        if self.ignored:
            parts.append(ignored_note(self.ignored))
        return "; ".join(parts) or "not in staging"


# ---------------------------------------------------------------------------- separation of duties


def authored_evaluation(rule: Rule, *, evaluator: str | None, registered_by: str | None,
                        environment: str) -> str | None:
    """Why a QA result does not count towards promotion, or None when it counts.

    Under `evaluator_not_author` the principal that registered a version may not also be the
    one vouching for it. Production monitors' results only ever trigger rollbacks (a step
    back), so they are not judged here; a result naming no evaluator, or a version with no
    known author, cannot be matched and counts (the Kafka ACLs decide who may publish it).
    """
    if not rule.evaluator_must_differ or environment == "production":
        return None
    if evaluator is None or registered_by is None or evaluator != registered_by:
        return None
    return (f"{evaluator} registered this version and cannot evaluate it: its results do not count towards "
            "promotion (evaluator_not_author)")


def independent_results(rule: Rule, results: Iterable[Result],
                        registered_by: str | None) -> tuple[list[Result], list[Result]]:
    """(the results that count, the ones the version's own author reported)."""
    counted: list[Result] = []
    ignored: list[Result] = []
    for result in results:
        authored = authored_evaluation(rule, evaluator=result.evaluator, registered_by=registered_by,
                                       environment=result.environment)
        (ignored if authored else counted).append(result)
    return counted, ignored


def ignored_note(ignored: Sequence[Result]) -> str:
    authors = sorted({r.evaluator or "?" for r in ignored})
    return (f"{len(ignored)} result(s) from {', '.join(authors)}, who registered this version, do not count "
            "(evaluator_not_author)")


def latest_per_suite(results: Iterable[Result]) -> dict[str, Result]:
    """The newest pre-production result of each suite: the one thresholds are judged on."""
    latest: dict[str, Result] = {}
    for result in results:
        if result.environment == "production":
            continue
        current = latest.get(result.suite)
        if current is None or result.seq > current.seq:
            latest[result.suite] = result
    return latest


def _metric_sources(threshold: Threshold, latest: Mapping[str, Result]) -> list[Result]:
    if threshold.suite is not None:
        result = latest.get(threshold.suite)
        return [result] if result is not None and threshold.metric in result.metrics else []
    return [r for r in latest.values() if threshold.metric in r.metrics]


def threshold_gates(thresholds: Iterable[Threshold], latest: Mapping[str, Result]) -> list[Gate]:
    gates = []
    for threshold in thresholds:
        sources = _metric_sources(threshold, latest)
        if not sources:
            gates.append(Gate(f"threshold:{threshold.key}", False,
                              f"no result reports {threshold.key} yet",
                              {"metric": threshold.metric, "threshold": str(threshold)}))
            continue
        broken = [r for r in sources if not threshold.holds(r.metrics[threshold.metric])]
        values = {r.suite: r.metrics[threshold.metric] for r in sources}
        shown = ", ".join(f"{v:g} ({s})" for s, v in values.items())
        gates.append(Gate(f"threshold:{threshold.key}", not broken,
                          f"{threshold.metric} = {shown} {'holds' if not broken else 'breaks'} "
                          f"{threshold}",
                          {"metric": threshold.metric, "threshold": str(threshold), "actual": values}))
    return gates


def _latest_value(results: Iterable[Result], metric: str) -> tuple[float, str] | None:
    found = [r for r in results if r.environment != "production" and metric in r.metrics]
    if not found:
        return None
    newest = max(found, key=lambda r: r.seq)
    return newest.metrics[metric], newest.suite


def champion_gate(rule: Rule, results: Sequence[Result], champion: Champion | None) -> Gate | None:
    if rule.champion is None:
        return None
    metric = rule.champion.metric
    name = f"champion:{metric}"
    if champion is None:
        return Gate(name, True, "no champion yet: nothing to beat", {"metric": metric})
    candidate = _latest_value(results, metric)
    if candidate is None:
        return Gate(name, False, f"no result reports {metric} yet", {"metric": metric,
                                                                     "champion_version": champion.version})
    incumbent = _latest_value(champion.results, metric)
    if incumbent is None:
        return Gate(name, True, f"champion v{champion.version} has no {metric} result to compare",
                    {"metric": metric, "candidate": candidate[0], "champion_version": champion.version})
    rule_ = rule.champion
    beats = rule_.beats(candidate[0], incumbent[0])
    relation = "beats" if beats else "does not beat"
    sign = "+" if rule_.direction == "higher" else "-"
    return Gate(name, beats,
                f"{metric} {candidate[0]:g} {relation} champion v{champion.version}'s {incumbent[0]:g} "
                f"by the required {sign}{rule_.min_improvement:g} ({rule_.direction} is better)",
                {"metric": metric, "candidate": candidate[0], "champion": incumbent[0],
                 "champion_version": champion.version, "direction": rule_.direction,
                 "min_improvement": rule_.min_improvement})


def evaluate_gates(rule: Rule, results: Sequence[Result], champion: Champion | None,
                   registered_by: str | None = None) -> tuple[Gate, ...]:
    """Every gate between staging and production, held or not (the API's `explain`), judged on
    the results that count (see `independent_results`)."""
    results, _ = independent_results(rule, results, registered_by)
    latest = latest_per_suite(results)
    gates = []
    for suite in rule.required_suites:
        result = latest.get(suite)
        if result is None:
            gates.append(Gate(f"suite:{suite}", False, f"no result from suite {suite} yet", {"suite": suite}))
        elif result.passed is False:
            gates.append(Gate(f"suite:{suite}", False, f"suite {suite} reported a failure", {"suite": suite}))
        else:
            gates.append(Gate(f"suite:{suite}", True, f"suite {suite} has a result", {"suite": suite}))
    gates += threshold_gates(rule.thresholds, latest)
    if (gate := champion_gate(rule, results, champion)) is not None:
        gates.append(gate)
    return tuple(gates)


def decide_promotion(stage: str, blocked: str | None, rule: Rule, results: Sequence[Result],
                     champion: Champion | None, registered_by: str | None = None) -> Decision:
    """staging -> production when every gate holds; nothing else is ever promoted by policy."""
    gates = evaluate_gates(rule, results, champion, registered_by)
    _, ignored = independent_results(rule, results, registered_by)
    if stage != "staging" or blocked is not None:
        return Decision(False, gates, tuple(ignored))
    return Decision(all(g.passed for g in gates), gates, tuple(ignored))


def decide_rollback(rule: Rule, result: Result) -> tuple[Gate, ...]:
    """The rollback thresholds a production result breaks (empty: keep the champion).

    A monitor reports what it measures: thresholds on metrics the result lacks are not judged.
    """
    if result.environment != "production":
        return ()
    relevant = [t for t in rule.rollback
                if t.metric in result.metrics and (t.suite is None or t.suite == result.suite)]
    gates = threshold_gates(relevant, {result.suite: Result(result.suite, "offline", result.metrics,
                                                             result.passed, result.seq)})
    return tuple(g for g in gates if not g.passed)


@dataclass(frozen=True)
class Restorable:
    version: int
    superseded_seq: int  # orders supersessions, newest highest


def choose_restore(candidates: Sequence[Restorable], previous_champion: int | None) -> int | None:
    """The version a rollback restores: the champion's predecessor if still restorable, else
    the most recently superseded one."""
    versions = {c.version for c in candidates}
    if previous_champion in versions:
        return previous_champion
    if not candidates:
        return None
    return max(candidates, key=lambda c: c.superseded_seq).version


@dataclass(frozen=True)
class ManualDecision:
    outcome: str  # "approve", "pending", "refuse", "elsewhere" (another service decides)
    detail: str
    approvers: tuple[str, ...] = ()
    needed: int = 1


def decide_manual(rule: Rule, *, actor: str, to_stage: str, registered_by: str | None,
                  stage: str, blocked: str | None, validated: bool, approvals: Iterable[str]) -> ManualDecision:
    """Who may move a version by hand, and whether enough distinct approvers have asked."""
    if stage == "archived" and to_stage == "none":
        return ManualDecision("elsewhere", "restoring an archived version is archival's to decide")
    if (refusal := rule.refuse_approver(actor, registered_by)) is not None:
        return ManualDecision("refuse", refusal)
    if stage == "archived":
        return ManualDecision("refuse", "the version is archived; restore it first (request stage none: "
                                        "`modelreg restore NAME VERSION`)")
    if blocked is not None and to_stage in ("staging", "production"):
        return ManualDecision("refuse", f"the version is {blocked} and can never be promoted")
    if not validated and to_stage in ("staging", "production"):
        # An approver vouches for the model, not for its bytes: the safety scan must have passed.
        return ManualDecision("refuse", f"the version has not passed validation yet; it cannot be moved to "
                                        f"{to_stage} before it does")
    if stage == to_stage:
        return ManualDecision("refuse", f"the version is already in {to_stage}")
    needed = rule.required_approvals if to_stage == "production" else 1
    # Only approvals that would count today: a policy that drops an approver drops their votes.
    valid = {a for a in approvals if a in rule.approvers and a != registered_by}
    approvers = tuple(sorted(valid | {actor}))
    if len(approvers) < needed:
        return ManualDecision("pending", f"{len(approvers)} of {needed} approvals", approvers, needed)
    return ManualDecision("approve", f"approved by {', '.join(approvers)}", approvers, needed)


@dataclass(frozen=True)
class LateRejection:
    """What a rejection of a version promotion already knows means for its stage."""

    demote: bool   # it is in staging or production: out at once
    restore: bool  # it was the champion: bring back the one it replaced
    detail: str


def decide_late_rejection(stage: str, why: str) -> LateRejection:
    """A version found unsafe or altered after it moved up (a late validation failure, an
    integrity mismatch) may not stay where it is, whatever approved it."""
    if stage == "production":
        return LateRejection(True, True, f"rejected while in production ({why}): demoted at once, the previous "
                                         "champion restored")
    if stage == "staging":
        return LateRejection(True, False, f"rejected while in staging ({why}): demoted at once")
    return LateRejection(False, False, f"rejected ({why})")


@dataclass(frozen=True)
class ImportDecision:
    outcome: str  # "apply" (move, or only record it), "wait" (for validation), "refuse"
    detail: str


def decide_import(rule: Rule, *, actor: str, to_stage: str, stage: str, validated: bool,
                  blocked: str | None, registered_by: str | None = None) -> ImportDecision:
    """An approver's request to reproduce the stage a version had in the registry it was
    imported from. The gates are not run again (that registry already decided), but the
    request must come from an approver, and the version must pass validation like any other:
    the artifact scan decides whether it may ever be staged or crowned."""
    if (refusal := rule.refuse_approver(actor, registered_by)) is not None:
        return ImportDecision("refuse", refusal)
    if to_stage == "archived":
        return ImportDecision("refuse", "an import never archives; archived versions are imported in stage none")
    if blocked is not None:
        return ImportDecision("refuse", f"the version is {blocked}: an imported version is only staged or crowned "
                                        "once it passes validation")
    if stage == "archived":
        return ImportDecision("refuse", "the version is archived here; restore it first")
    if not validated:
        return ImportDecision("wait", f"{to_stage} once validation passes")
    if stage == to_stage:
        return ImportDecision("apply", f"already in {to_stage}")
    return ImportDecision("apply", f"{stage} -> {to_stage} as imported")
