"""The promotion aggregate (shared/domain/registered_model.py): each command takes one fact and
returns, in order, the domain events it leads to, changing the model as it goes. Pure: no
database, no Kafka, no artifact; integrity verdicts are handed in by the test."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from textwrap import dedent
from typing import Any, TypeVar

import pytest

from shared.domain.promotion import (
    Champion,
    Result,
    authored_evaluation,
    decide_late_rejection,
    decide_promotion,
    decide_rollback,
)
from shared.domain.registered_model import (
    ApprovalPending,
    ApprovalRecorded,
    ApprovalsCleared,
    Blocked,
    Decided,
    Demoted,
    DomainEvent,
    EvaluationIgnored,
    Held,
    Imported,
    ImportRefused,
    ImportSettled,
    ImportWaiting,
    NoRestore,
    PendingImport,
    Promoted,
    Quarantined,
    RegisteredModel,
    Request,
    RequestRefused,
    Validated,
    VerdictNeeded,
    Version,
    restore_target,
)
from shared.events import Stage
from shared.policy import Rule, parse_policy

E = TypeVar("E")


def rule_from(yaml_body: str) -> Rule:
    """The only rule of a one-rule policy; `yaml_body` holds the rule's keys."""
    body = dedent(yaml_body).strip("\n").replace("\n", "\n    ")
    return parse_policy(f'rules:\n  - match: "*"\n    {body}\n').rules[0]


# Every gate kind, a rollback threshold and three approvers. It has thresholds, so
# evaluator_not_author holds: the version's author cannot vouch for it.
GATED = rule_from("""
    required_suites: [smoke]
    thresholds: {auc: ">= 0.9"}
    champion: {metric: auc, direction: higher, min_improvement: 0.01}
    rollback: {auc: ">= 0.85"}
    approvers: [alice, bob, carol]
""")
TWO_APPROVALS = replace(GATED, required_approvals=2)
NO_AUTO_STAGING = replace(GATED, auto_staging=False)

NAME = "fraud"
REVISION = "rev-7"
CHECKS = {"checks": [{"check": "pickle_scan", "passed": True}]}  # a validation's evidence
REQUEST_ID = uuid.UUID(int=1)
SECOND_REQUEST_ID = uuid.UUID(int=2)
IMPORTED_FROM = {"system": "mlflow", "model": "fraud", "version": 3}


# ---------------------------------------------------------------------------- building blocks


def offline(auc: float, *, seq: int = 2, evaluator: str | None = "qa", passed: bool | None = True) -> Result:
    """A QA result of the required suite (by `qa` unless said otherwise: not the versions' author)."""
    return Result("smoke", "offline", {"auc": auc}, passed, seq, evaluator)


def live(auc: float, *, seq: int = 50, evaluator: str | None = "monitor") -> Result:
    """A production monitor's result: it can only ever roll a champion back."""
    return Result("live", "production", {"auc": auc}, None, seq, evaluator)


def champion(number: int = 1, auc: float = 0.90, **fields: Any) -> Version:
    return Version(number, "production", validated=True, registered_by="ci", results=[offline(auc, seq=1)],
                   **fields)


def staged(number: int = 2, *results: Result, **fields: Any) -> Version:
    return Version(number, "staging", validated=True, registered_by="ci", results=list(results), **fields)


def fresh(number: int = 2, *results: Result, **fields: Any) -> Version:
    """Registered, not validated yet, in stage none."""
    return Version(number, "none", registered_by="ci", results=list(results), **fields)


def retired(number: int, superseded: int, **fields: Any) -> Version:
    """A former champion a newer one superseded: a rollback target."""
    return Version(number, "none", validated=True, registered_by="ci", superseded=superseded,
                   results=[offline(0.88, seq=1)], **fields)


@dataclass(frozen=True)
class Evidence:
    fields: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass(frozen=True)
class Verdict:
    intact: bool
    message: str = "sha256 matches the registered one"
    evidence: Evidence = field(default_factory=lambda: Evidence({"sha256": "aa"}))


INTACT = Verdict(True)
ALTERED = Verdict(False, "checksum_mismatch: the stored bytes are not the registered ones",
                  Evidence({"expected": "aa", "actual": "bb"}))


class Verdicts:
    """The integrity verdicts a test hands the model (intact unless said otherwise), and the
    versions the model asked about."""

    def __init__(self, *, altered: Iterable[int] = (), unknown: Iterable[int] = ()) -> None:
        self.altered = set(altered)
        self.unknown = set(unknown)
        self.asked: list[int] = []

    def __call__(self, number: int) -> Verdict | None:
        self.asked.append(number)
        if number in self.unknown:
            return None
        return ALTERED if number in self.altered else INTACT


def model(*versions: Version, rule: Rule = GATED, verdicts: Verdicts | None = None) -> RegisteredModel:
    return RegisteredModel(NAME, rule, REVISION, versions, verdicts if verdicts is not None else Verdicts())


def evaluate(m: RegisteredModel, number: int, result: Result) -> list[DomainEvent]:
    """A QA result as the service hands it over: already among the version's results."""
    m.versions[number].results.append(result)
    return m.evaluate(number, result)


def ask(actor: str = "alice", to_stage: Stage = "production", request_id: uuid.UUID = REQUEST_ID) -> Request:
    return Request(actor, to_stage, "ship it", request_id)


def manual_evidence(actor: str, to_stage: Stage, approvers: list[str]) -> dict[str, Any]:
    return {"requested_by": actor, "request_reason": "ship it", "to_stage": to_stage, "approvers": approvers,
            "policy_revision": REVISION}


def import_request(to_stage: Stage, actor: str = "alice") -> Request:
    return Request(actor, to_stage, "as in mlflow", REQUEST_ID, IMPORTED_FROM)


def import_evidence(to_stage: Stage, actor: str = "alice") -> dict[str, Any]:
    return {"imported_from": IMPORTED_FROM, "requested_by": actor, "request_reason": "as in mlflow",
            "to_stage": to_stage, "approvers": [actor]}


def policy_evidence(results: list[Result], rival: Champion | None) -> dict[str, Any]:
    """What a crown or a hold by policy carries: every gate, and the policy's revision."""
    return {**decide_promotion("staging", None, GATED, results, rival, "ci").evidence(), "policy_revision": REVISION}


def kinds(events: Iterable[DomainEvent]) -> list[str]:
    """The sequence a command decided: each event's type, and a decision's outcome."""
    return [f"Decided:{e.outcome}" if isinstance(e, Decided) else type(e).__name__ for e in events]


def only(kind: type[E], events: list[DomainEvent]) -> E:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} among {kinds(events)}"
    return found[0]


def stages(m: RegisteredModel) -> dict[int, Stage]:
    return {number: v.stage for number, v in m.versions.items()}


# ---------------------------------------------------------------------------- validate


def test_validation_stages_a_new_version_and_records_that_it_passed() -> None:
    verdicts = Verdicts()
    m = model(fresh(2), verdicts=verdicts)
    events = m.validate(2, CHECKS)
    # Nothing measured yet: no hold recorded, no crown attempted.
    assert events == [Promoted(2, "none", "staging", "policy", CHECKS, validated=True)]
    version = m.versions[2]
    assert (version.stage, version.validated, version.blocked, version.superseded) == ("staging", True, None, None)
    assert verdicts.asked == []


def test_validation_crowns_at_once_when_the_results_already_meet_every_gate() -> None:
    verdicts = Verdicts()
    early = offline(0.95)
    m = model(champion(1, 0.90), fresh(2, early), verdicts=verdicts)
    events = m.validate(2, CHECKS)
    assert kinds(events) == ["Promoted", "Demoted", "Promoted", "Decided:promoted"]
    assert events[0] == Promoted(2, "none", "staging", "policy", CHECKS, validated=True)
    assert events[1] == Demoted(1, "production", "none", "superseded", {"superseded_by": 2}, superseded=True)
    assert events[2] == Promoted(2, "staging", "production", "policy",
                                 policy_evidence([early], Champion(1, [offline(0.90, seq=1)])),
                                 previous_champion=1)
    assert stages(m) == {1: "none", 2: "production"}
    assert m.champion is m.versions[2]
    assert m.versions[2].previous_champion == 1 and m.versions[2].validated is True
    assert m.versions[1].superseded == 1 and m.versions[1].blocked is None
    assert verdicts.asked == [2]


def test_validation_holds_a_staged_version_whose_results_fail_a_gate() -> None:
    verdicts = Verdicts()
    close = offline(0.905)  # meets the threshold, not the champion's +0.01
    m = model(champion(1, 0.90), fresh(2, close), verdicts=verdicts)
    events = m.validate(2, CHECKS)
    assert kinds(events) == ["Promoted", "Decided:held", "Held"]
    rival = Champion(1, [offline(0.90, seq=1)])
    decision = decide_promotion("staging", None, GATED, [close], rival, "ci")
    assert events[2] == Held(2, "staging", "staging", None, decision.reason(), policy_evidence([close], rival))
    assert "does not beat champion v1" in decision.reason()
    assert stages(m) == {1: "production", 2: "staging"}
    assert verdicts.asked == []


def test_validation_under_a_rule_without_gates_crowns_at_once_with_no_previous_champion() -> None:
    m = model(fresh(2), rule=Rule(match="*"))
    events = m.validate(2, CHECKS)
    assert kinds(events) == ["Promoted", "Promoted", "Decided:promoted"]
    assert events[1] == Promoted(2, "staging", "production", "policy", {"gates": [], "policy_revision": REVISION})
    assert m.versions[2].previous_champion is None


def test_validation_without_auto_staging_only_records_it() -> None:
    m = model(fresh(2, offline(0.99)), rule=NO_AUTO_STAGING)
    assert m.validate(2, CHECKS) == [Validated(2)]
    assert (m.versions[2].stage, m.versions[2].validated) == ("none", True)


@pytest.mark.parametrize("blocked", ["rejected", "quarantined", "rolled_back"])
def test_validation_never_stages_a_blocked_version(blocked: str) -> None:
    m = model(fresh(2, offline(0.99), blocked=blocked))
    assert m.validate(2, CHECKS) == [Validated(2)]
    assert m.versions[2].stage == "none"


def test_validation_of_a_version_already_past_stage_none_only_records_it() -> None:
    m = model(Version(2, "staging", registered_by="ci"))
    assert m.validate(2, CHECKS) == [Validated(2)]
    assert (m.versions[2].stage, m.versions[2].validated) == ("staging", True)


def test_validation_that_would_crown_needs_the_candidates_verdict() -> None:
    m = model(champion(1, 0.90), fresh(2, offline(0.95)), verdicts=Verdicts(unknown=[2]))
    with pytest.raises(VerdictNeeded) as needed:
        m.validate(2, CHECKS)
    assert needed.value.version == 2


def test_validation_that_would_crown_an_altered_version_quarantines_it_in_staging() -> None:
    m = model(champion(1, 0.90), fresh(2, offline(0.95)), verdicts=Verdicts(altered=[2]))
    events = m.validate(2, CHECKS)
    assert kinds(events) == ["Promoted", "Decided:quarantined", "Quarantined", "Decided:demoted_quarantined",
                             "Demoted"]
    assert events[2] == Quarantined(2, "staging", ALTERED.message, ALTERED.evidence)
    assert only(Demoted, events).from_stage == "staging"
    assert stages(m) == {1: "production", 2: "none"}
    assert m.versions[2].blocked == "quarantined"


# ---------------------------------------------------------------------------- evaluate


def test_a_qa_result_that_meets_every_gate_crowns_the_staging_version_over_the_champion() -> None:
    verdicts = Verdicts()
    m = model(champion(1, 0.90), staged(2), verdicts=verdicts)
    good = offline(0.95)
    events = evaluate(m, 2, good)
    assert events == [
        Demoted(1, "production", "none", "superseded", {"superseded_by": 2}, superseded=True),
        Promoted(2, "staging", "production", "policy", policy_evidence([good], Champion(1, [offline(0.90, seq=1)])),
                 previous_champion=1),
        Decided("promoted"),
    ]
    assert stages(m) == {1: "none", 2: "production"}
    assert (m.versions[1].superseded, m.versions[2].previous_champion) == (1, 1)
    assert verdicts.asked == [2]


def test_a_first_champion_is_crowned_with_no_previous_champion() -> None:
    m = model(staged(2))
    good = offline(0.95)
    events = evaluate(m, 2, good)
    assert events == [Promoted(2, "staging", "production", "policy", policy_evidence([good], None)),
                      Decided("promoted")]
    assert m.versions[2].previous_champion is None


@pytest.mark.parametrize("result,failing", [
    (offline(0.88), "auc = 0.88 (smoke) breaks >= 0.9"),
    (offline(0.905), "does not beat champion v1"),
    (offline(0.99, passed=False), "suite smoke reported a failure"),
])
def test_a_qa_result_that_fails_a_gate_holds_the_version(result: Result, failing: str) -> None:
    verdicts = Verdicts()
    m = model(champion(1, 0.90), staged(2), verdicts=verdicts)
    events = evaluate(m, 2, result)
    assert kinds(events) == ["Decided:held", "Held"]
    held = only(Held, events)
    assert (held.version, held.from_stage) == (2, "staging")
    assert failing in held.reason
    assert held.evidence == policy_evidence([result], Champion(1, [offline(0.90, seq=1)]))
    assert stages(m) == {1: "production", 2: "staging"}
    assert verdicts.asked == []


def test_a_result_from_the_versions_author_is_ignored_and_does_not_count() -> None:
    m = model(champion(1, 0.90), staged(2))
    own = offline(0.99, evaluator="ci")  # ci registered v2
    events = evaluate(m, 2, own)
    assert kinds(events) == ["Decided:ignored_evaluation", "EvaluationIgnored", "Decided:held", "Held"]
    why = authored_evaluation(GATED, evaluator="ci", registered_by="ci", environment="offline")
    assert why is not None
    assert events[1] == EvaluationIgnored(2, "staging", "staging", "ci", why, {"suite": "smoke", "evaluator": "ci",
                                                                     "registered_by": "ci",
                                                                     "policy_revision": REVISION})
    held = only(Held, events)
    assert "do not count (evaluator_not_author)" in held.reason
    assert held.evidence["ignored_evaluations"] == [{"suite": "smoke", "evaluator": "ci", "seq": 2}]
    assert stages(m) == {1: "production", 2: "staging"}


def test_an_independent_result_after_the_authors_one_crowns_the_version() -> None:
    m = model(champion(1, 0.90), staged(2))
    evaluate(m, 2, offline(0.99, evaluator="ci", seq=2))
    events = evaluate(m, 2, offline(0.95, evaluator="qa", seq=3))
    assert kinds(events) == ["Demoted", "Promoted", "Decided:promoted"]
    assert stages(m) == {1: "none", 2: "production"}


def test_the_author_may_evaluate_when_the_rule_does_not_forbid_it() -> None:
    m = model(staged(2), rule=replace(GATED, evaluator_not_author=False))
    events = evaluate(m, 2, offline(0.95, evaluator="ci"))
    assert kinds(events) == ["Promoted", "Decided:promoted"]


def test_a_production_result_breaking_a_rollback_threshold_restores_the_previous_champion() -> None:
    verdicts = Verdicts()
    m = model(retired(1, superseded=1), champion(2, previous_champion=1), verdicts=verdicts)
    bad = live(0.80)
    events = evaluate(m, 2, bad)
    evidence = {"broken": [g.as_dict() for g in decide_rollback(GATED, bad)], "suite": "live",
                "policy_revision": REVISION}
    assert evidence["broken"] != []
    assert events == [
        Decided("rolled_back"),
        Demoted(2, "production", "none", "rollback", evidence, blocked="rolled_back"),
        Promoted(1, "none", "production", "rollback", {**evidence, "rolled_back": 2}, previous_champion=2),
    ]
    assert stages(m) == {1: "production", 2: "none"}
    assert (m.versions[2].blocked, m.versions[2].superseded) == ("rolled_back", None)
    assert (m.versions[1].superseded, m.versions[1].previous_champion) == (None, 2)
    assert verdicts.asked == [1]


def test_a_rollback_by_the_versions_author_still_counts() -> None:
    """Production monitors only ever step back: evaluator_not_author does not apply."""
    m = model(retired(1, superseded=1), champion(2, previous_champion=1))
    events = evaluate(m, 2, live(0.80, evaluator="ci"))
    assert kinds(events) == ["Decided:rolled_back", "Demoted", "Promoted"]


def test_a_rollback_skips_a_blocked_predecessor_for_the_most_recently_superseded_version() -> None:
    m = model(retired(1, superseded=1), retired(2, superseded=2, blocked="rejected"), retired(3, superseded=3),
              champion(4, previous_champion=2))
    events = evaluate(m, 4, live(0.80))
    promoted = only(Promoted, events)
    assert (promoted.version, promoted.previous_champion) == (3, 4)
    assert stages(m) == {1: "none", 2: "none", 3: "production", 4: "none"}


def test_a_fallen_champion_with_no_restorable_version_leaves_the_model_without_one() -> None:
    verdicts = Verdicts()
    m = model(champion(2), Version(1, "none", validated=True, blocked="rejected", superseded=1), verdicts=verdicts)
    bad = live(0.80)
    events = evaluate(m, 2, bad)
    evidence = {"broken": [g.as_dict() for g in decide_rollback(GATED, bad)], "suite": "live",
                "policy_revision": REVISION}
    assert events == [
        Decided("rolled_back"),
        Demoted(2, "production", "none", "rollback", evidence, blocked="rolled_back"),
        NoRestore(2, None, None, None,
                  "production metrics broke the rollback thresholds and no earlier version is restorable: "
                  "the model has no champion now", evidence),
    ]
    assert m.champion is None
    assert verdicts.asked == []


def test_a_restored_champion_that_falls_too_gives_way_to_the_next_restorable_version() -> None:
    m = model(retired(1, superseded=1), retired(2, superseded=2), champion(3, previous_champion=2))
    evaluate(m, 3, live(0.80, seq=50))
    assert m.champion is m.versions[2] and m.versions[2].previous_champion == 3
    events = evaluate(m, 2, live(0.70, seq=51))  # its predecessor, v3, is blocked now
    assert kinds(events) == ["Decided:rolled_back", "Demoted", "Promoted"]
    assert only(Promoted, events).version == 1
    assert stages(m) == {1: "production", 2: "none", 3: "none"}
    assert (m.versions[2].blocked, m.versions[3].blocked) == ("rolled_back", "rolled_back")


def test_a_healthy_production_result_keeps_the_champion() -> None:
    m = model(retired(1, superseded=1), champion(2, previous_champion=1))
    assert evaluate(m, 2, live(0.85)) == []  # exactly at the threshold: it holds
    assert stages(m) == {1: "none", 2: "production"}


@pytest.mark.parametrize("stage", ["staging", "none"])
def test_a_production_result_on_a_version_that_is_not_the_champion_does_nothing(stage: Stage) -> None:
    verdicts = Verdicts()
    m = model(champion(1), Version(2, stage, validated=True, registered_by="ci"), verdicts=verdicts)
    assert evaluate(m, 2, live(0.10)) == []
    assert stages(m) == {1: "production", 2: stage}
    assert m.versions[2].blocked is None
    assert verdicts.asked == []


@pytest.mark.parametrize("stage", ["none", "production"])
def test_a_qa_result_on_a_version_outside_staging_decides_nothing(stage: Stage) -> None:
    m = model(Version(2, stage, validated=True, registered_by="ci"))
    assert evaluate(m, 2, offline(0.99)) == []
    assert m.versions[2].stage == stage


def test_an_ignored_result_outside_staging_is_still_reported_as_ignored() -> None:
    m = model(fresh(2))
    assert kinds(evaluate(m, 2, offline(0.99, evaluator="ci"))) == ["Decided:ignored_evaluation",
                                                                     "EvaluationIgnored"]
    assert only(EvaluationIgnored, m.evaluate(2, offline(0.99, evaluator="ci"))).from_stage == "none"


def test_rollback_gates_are_the_policys_rollback_decision() -> None:
    m = model(champion(1))
    assert m.rollback_gates(live(0.80)) == decide_rollback(GATED, live(0.80)) != ()
    assert m.rollback_gates(live(0.90)) == ()


# ---------------------------------------------------------------------------- verdicts


def test_a_crown_by_policy_without_a_verdict_raises_verdict_needed_for_the_candidate() -> None:
    m = RegisteredModel(NAME, GATED, REVISION, [champion(1), staged(2)])  # no verdicts at all
    with pytest.raises(VerdictNeeded) as needed:
        evaluate(m, 2, offline(0.95))
    assert needed.value.version == 2
    assert str(needed.value) == "the integrity of v2 is not known yet"


def test_a_rollback_without_the_targets_verdict_asks_for_the_target_not_the_fallen_champion() -> None:
    m = model(retired(1, superseded=1), champion(2, previous_champion=1), verdicts=Verdicts(unknown=[1]))
    with pytest.raises(VerdictNeeded) as needed:
        evaluate(m, 2, live(0.80))
    assert needed.value.version == 1


def test_a_manual_crown_without_a_verdict_raises_verdict_needed() -> None:
    m = model(champion(1), staged(2), verdicts=Verdicts(unknown=[2]))
    with pytest.raises(VerdictNeeded) as needed:
        m.request(2, ask("alice"))
    assert needed.value.version == 2


def test_an_import_crown_without_a_verdict_raises_verdict_needed() -> None:
    m = model(Version(2, "none", validated=True, registered_by="ci"), verdicts=Verdicts(unknown=[2]))
    with pytest.raises(VerdictNeeded) as needed:
        m.request(2, import_request("production"))
    assert needed.value.version == 2


def test_an_altered_candidate_is_quarantined_and_leaves_staging_while_the_champion_stays() -> None:
    m = model(champion(1, 0.90), staged(2), verdicts=Verdicts(altered=[2]))
    events = evaluate(m, 2, offline(0.95))
    detail = decide_late_rejection("staging", ALTERED.message).detail
    assert events == [
        Decided("quarantined"),
        Quarantined(2, "staging", ALTERED.message, ALTERED.evidence),
        Decided("demoted_quarantined"),
        Demoted(2, "staging", "none", "quarantined", {"expected": "aa", "actual": "bb", "detail": detail},
                blocked="quarantined"),
    ]
    assert stages(m) == {1: "production", 2: "none"}
    assert m.versions[2].blocked == "quarantined"
    assert m.versions[1].superseded is None  # never retired: the integrity check comes first


def test_an_altered_rollback_target_is_quarantined_and_the_next_one_restored() -> None:
    m = model(retired(1, superseded=2), retired(3, superseded=1), champion(4, previous_champion=1),
              verdicts=Verdicts(altered=[1]))
    events = evaluate(m, 4, live(0.80))
    assert kinds(events) == ["Decided:rolled_back", "Demoted", "Decided:quarantined", "Quarantined", "Promoted"]
    assert events[3] == Quarantined(1, "none", ALTERED.message, ALTERED.evidence)
    restored = events[4]
    assert isinstance(restored, Promoted)
    assert (restored.version, restored.reason, restored.previous_champion) == (3, "rollback", 4)
    assert stages(m) == {1: "none", 3: "production", 4: "none"}
    assert (m.versions[1].blocked, m.versions[4].blocked) == ("quarantined", "rolled_back")


def test_when_every_rollback_target_is_altered_the_model_has_no_champion_on_the_record() -> None:
    m = model(retired(1, superseded=1), champion(2, previous_champion=1), verdicts=Verdicts(altered=[1]))
    events = evaluate(m, 2, live(0.80))
    assert kinds(events) == ["Decided:rolled_back", "Demoted", "Decided:quarantined", "Quarantined", "NoRestore"]
    assert events[3] == Quarantined(1, "none", ALTERED.message, ALTERED.evidence)
    assert stages(m) == {1: "none", 2: "none"}
    assert (m.versions[1].blocked, m.versions[2].blocked) == ("quarantined", "rolled_back")
    assert m.champion is None


def test_an_altered_version_crowned_by_hand_is_quarantined_and_its_votes_are_not_spent() -> None:
    m = model(champion(1), staged(2), verdicts=Verdicts(altered=[2]))
    events = m.request(2, ask("alice"))
    assert kinds(events) == ["Decided:manual_approve", "ApprovalRecorded", "Decided:quarantined", "Quarantined",
                             "Decided:demoted_quarantined", "Demoted"]
    assert stages(m) == {1: "production", 2: "none"}
    assert m.versions[2].blocked == "quarantined"


# ---------------------------------------------------------------------------- reject


REJECTION = {"reasons": [{"code": "unsafe_pickle", "message": "posix.system"}], "rejected_by": "modelreg/validation"}
WHY = "unsafe_pickle: posix.system"


def test_a_rejected_staging_version_is_demoted_and_blocked() -> None:
    m = model(champion(1), staged(2))
    events = m.reject(2, WHY, REJECTION)
    assert events == [
        Blocked(2, "rejected"),
        Decided("demoted_rejected"),
        Demoted(2, "staging", "none", "rejected",
                {**REJECTION, "detail": decide_late_rejection("staging", WHY).detail}, blocked="rejected"),
    ]
    assert stages(m) == {1: "production", 2: "none"}
    assert m.versions[2].blocked == "rejected"


def test_a_rejected_champion_is_demoted_and_its_predecessor_restored() -> None:
    m = model(retired(1, superseded=1), champion(2, previous_champion=1))
    events = m.reject(2, WHY, REJECTION)
    evidence = {**REJECTION, "detail": decide_late_rejection("production", WHY).detail}
    assert events == [
        Blocked(2, "rejected"),
        Decided("demoted_rejected"),
        Demoted(2, "production", "none", "rejected", evidence, blocked="rejected"),
        Promoted(1, "none", "production", "rollback", {**evidence, "policy_revision": REVISION, "rolled_back": 2},
                 previous_champion=2),
    ]
    assert stages(m) == {1: "production", 2: "none"}
    assert m.versions[2].blocked == "rejected"


def test_a_rejected_champion_with_nothing_to_restore_leaves_no_champion() -> None:
    m = model(champion(2))
    events = m.reject(2, WHY, REJECTION)
    evidence = {**REJECTION, "detail": decide_late_rejection("production", WHY).detail, "policy_revision": REVISION}
    assert kinds(events) == ["Blocked", "Decided:demoted_rejected", "Demoted", "NoRestore"]
    assert events[3] == NoRestore(2, None, None, None,
                                  "fraud v2 was rejected in production and no earlier version is restorable: "
                                  "the model has no champion now", evidence)
    assert m.champion is None


@pytest.mark.parametrize("stage", ["none", "archived"])
def test_a_rejected_version_below_staging_is_only_blocked(stage: Stage) -> None:
    m = model(champion(1), Version(2, stage, registered_by="ci"))
    assert m.reject(2, WHY, REJECTION) == [Blocked(2, "rejected")]
    assert (m.versions[2].stage, m.versions[2].blocked) == (stage, "rejected")


def test_a_rejection_drops_a_registrations_import_claim() -> None:
    m = model(fresh(2))
    m.claim_import(2, IMPORTED_FROM, REQUEST_ID)
    assert m.reject(2, WHY, REJECTION) == [Blocked(2, "rejected"), ImportSettled(2)]
    assert m.versions[2].pending_import is None


def test_a_rejection_refuses_a_waiting_import_request() -> None:
    m = model(fresh(2))
    m.request(2, import_request("production"))
    events = m.reject(2, WHY, REJECTION)
    assert kinds(events) == ["Blocked", "ImportSettled", "Decided:import_refuse", "ImportRefused"]
    refused = only(ImportRefused, events)
    assert (refused.version, refused.from_stage, refused.to_stage, refused.actor) == (2, "none", "production", "alice")
    assert refused.reason.startswith("the version is rejected")
    assert refused.evidence == import_evidence("production")
    assert (m.versions[2].pending_import, m.versions[2].stage) == (None, "none")


# ---------------------------------------------------------------------------- request (by hand)


@pytest.mark.parametrize("version,actor,to_stage,detail", [
    pytest.param(Version(2, "staging", validated=True, registered_by="alice"), "alice", "production",
                 "alice registered this version and cannot approve it (separation of duties)", id="own version"),
    pytest.param(staged(2), "mallory", "production", "mallory is not an approver for this model", id="not approver"),
    pytest.param(Version(2, "archived", validated=True, registered_by="ci"), "alice", "production",
                 "the version is archived; restore it first", id="archived"),
    pytest.param(Version(2, "none", validated=True, blocked="rejected", registered_by="ci"), "alice", "staging",
                 "the version is rejected and can never be promoted", id="blocked"),
    pytest.param(fresh(2), "alice", "staging", "the version has not passed validation yet", id="not validated"),
    pytest.param(staged(2), "alice", "staging", "the version is already in staging", id="already there"),
])
def test_a_request_that_may_not_be_granted_is_refused_and_leaves_no_vote(version: Version, actor: str,
                                                                         to_stage: Stage, detail: str) -> None:
    verdicts = Verdicts()
    m = model(champion(1), version, verdicts=verdicts)
    events = m.request(2, ask(actor, to_stage))
    assert kinds(events) == ["Decided:manual_refuse", "RequestRefused"]
    refused = only(RequestRefused, events)
    assert (refused.version, refused.from_stage, refused.to_stage, refused.actor) == (2, version.stage, to_stage, actor)
    assert detail in refused.reason
    assert refused.evidence == {"requested_by": actor, "request_reason": "ship it", "to_stage": to_stage}
    assert m.versions[2].approvals == {}
    assert stages(m) == {1: "production", 2: version.stage}
    assert verdicts.asked == []


def test_a_first_approval_of_two_is_recorded_as_pending() -> None:
    verdicts = Verdicts()
    m = model(champion(1), staged(2), rule=TWO_APPROVALS, verdicts=verdicts)
    events = m.request(2, ask("alice"))
    assert events == [
        Decided("manual_pending"),
        ApprovalRecorded(2, "production", "alice", "ship it", REQUEST_ID),
        ApprovalPending(2, "staging", "production", "alice", "1 of 2 approvals",
                        {"requested_by": "alice", "request_reason": "ship it", "to_stage": "production",
                         "approvers": ["alice"], "needed": 2}),
    ]
    assert m.versions[2].approvals == {"production": frozenset({"alice"})}
    assert stages(m) == {1: "production", 2: "staging"}
    assert verdicts.asked == []


def test_the_same_approver_asking_twice_is_still_one_approval() -> None:
    m = model(champion(1), staged(2), rule=TWO_APPROVALS)
    m.request(2, ask("alice"))
    events = m.request(2, ask("alice", request_id=SECOND_REQUEST_ID))
    assert kinds(events) == ["Decided:manual_pending", "ApprovalRecorded", "ApprovalPending"]
    assert only(ApprovalPending, events).reason == "1 of 2 approvals"
    assert m.versions[2].approvals == {"production": frozenset({"alice"})}


def test_the_second_approval_crowns_the_version_and_spends_the_votes() -> None:
    m = model(champion(1), staged(2), rule=TWO_APPROVALS)  # v2 has no results: gates are the approvers' call
    m.request(2, ask("alice"))
    events = m.request(2, ask("bob", request_id=SECOND_REQUEST_ID))
    assert events == [
        Decided("manual_approve"),
        ApprovalRecorded(2, "production", "bob", "ship it", SECOND_REQUEST_ID),
        Demoted(1, "production", "none", "superseded", {"superseded_by": 2}, superseded=True),
        Promoted(2, "staging", "production", "manual", manual_evidence("bob", "production", ["alice", "bob"]),
                 actor="bob", previous_champion=1),
        ApprovalsCleared(2, "production"),
    ]
    assert stages(m) == {1: "none", 2: "production"}
    assert m.versions[2].approvals == {}
    assert (m.versions[1].superseded, m.versions[2].previous_champion) == (1, 1)


def test_votes_for_another_stage_do_not_count() -> None:
    m = model(staged(2, approvals={"none": frozenset({"bob"})}), rule=TWO_APPROVALS)
    events = m.request(2, ask("alice"))
    assert only(ApprovalPending, events).reason == "1 of 2 approvals"
    assert m.versions[2].approvals == {"none": frozenset({"bob"}), "production": frozenset({"alice"})}


def test_a_manual_crown_of_a_validated_version_in_stage_none_skips_staging() -> None:
    m = model(Version(2, "none", validated=True, registered_by="ci"))
    events = m.request(2, ask("alice"))
    assert only(Promoted, events) == Promoted(2, "none", "production", "manual",
                                              manual_evidence("alice", "production", ["alice"]), actor="alice")
    assert m.versions[2].stage == "production"


def test_a_manual_staging_moves_a_validated_version_up() -> None:
    m = model(Version(2, "none", validated=True, registered_by="ci"))
    events = m.request(2, ask("alice", "staging"))
    assert events == [
        Decided("manual_approve"),
        ApprovalRecorded(2, "staging", "alice", "ship it", REQUEST_ID),
        Promoted(2, "none", "staging", "manual", manual_evidence("alice", "staging", ["alice"]), actor="alice"),
        ApprovalsCleared(2, "staging"),
    ]
    assert m.versions[2].stage == "staging" and m.versions[2].approvals == {}


def test_a_manual_move_to_none_demotes_a_staging_version() -> None:
    m = model(staged(2))
    events = m.request(2, ask("alice", "none"))
    assert events == [
        Decided("manual_approve"),
        ApprovalRecorded(2, "none", "alice", "ship it", REQUEST_ID),
        Demoted(2, "staging", "none", "manual", manual_evidence("alice", "none", ["alice"]), actor="alice"),
        ApprovalsCleared(2, "none"),
    ]
    assert m.versions[2].stage == "none"


def test_a_manual_demotion_of_the_champion_restores_no_one_and_makes_it_no_rollback_target() -> None:
    m = model(retired(1, superseded=1), champion(2, previous_champion=1))
    events = m.request(2, ask("alice", "none"))
    assert kinds(events) == ["Decided:manual_approve", "ApprovalRecorded", "Demoted", "ApprovalsCleared"]
    demoted = only(Demoted, events)
    assert (demoted.from_stage, demoted.to_stage, demoted.superseded, demoted.blocked) == (
        "production", "none", False, None)
    assert m.champion is None
    assert (m.versions[2].superseded, m.versions[2].blocked) == (None, None)


@pytest.mark.parametrize("version", [staged(2), Version(2, "none", validated=True, blocked="rejected",
                                                        registered_by="ci")])
def test_a_manual_archival_is_demoted_to_archived_but_kept_in_none_until_archival_moves_it(version: Version) -> None:
    m = model(version)
    events = m.request(2, ask("alice", "archived"))
    demoted = only(Demoted, events)
    assert (demoted.from_stage, demoted.to_stage, demoted.reason, demoted.actor) == (
        version.stage, "archived", "manual", "alice")
    assert events[-1] == ApprovalsCleared(2, "archived")
    assert m.versions[2].stage == "none"


@pytest.mark.parametrize("actor", ["alice", "mallory"])
def test_bringing_an_archived_version_back_is_left_to_archival(actor: str) -> None:
    m = model(Version(2, "archived", validated=True, registered_by="ci"))
    assert m.request(2, ask(actor, "none")) == []
    assert (m.versions[2].stage, m.versions[2].approvals) == ("archived", {})


# ---------------------------------------------------------------------------- imports


def test_an_import_request_before_validation_waits_for_it() -> None:
    m = model(fresh(2))
    events = m.request(2, import_request("production"))
    pending = PendingImport("production", "alice", "as in mlflow", IMPORTED_FROM, REQUEST_ID)
    assert events == [ImportWaiting(2, pending)]
    assert (m.versions[2].pending_import, m.versions[2].stage) == (pending, "none")


def test_validation_applies_a_waiting_import_instead_of_the_policys_staging() -> None:
    verdicts = Verdicts()
    m = model(champion(1), fresh(2), verdicts=verdicts)
    m.request(2, import_request("production"))
    events = m.validate(2, CHECKS)
    assert events == [
        Validated(2),
        ImportSettled(2),
        Decided("import_apply"),
        Demoted(1, "production", "none", "superseded", {"superseded_by": 2}, superseded=True),
        Promoted(2, "none", "production", "manual", import_evidence("production"), actor="alice",
                 previous_champion=1),
        Imported(2, "none", "production", "alice", "mlflow fraud v3: none -> production as imported",
                 {**import_evidence("production"), "policy_revision": REVISION}),
    ]
    version = m.versions[2]
    assert (version.stage, version.validated, version.pending_import) == ("production", True, None)
    assert verdicts.asked == [2]


def test_an_import_request_after_validation_is_applied_at_once() -> None:
    m = model(Version(2, "none", validated=True, registered_by="ci"))
    events = m.request(2, import_request("staging"))
    assert events == [
        ImportSettled(2),
        Decided("import_apply"),
        Promoted(2, "none", "staging", "manual", import_evidence("staging"), actor="alice"),
        Imported(2, "none", "staging", "alice", "mlflow fraud v3: none -> staging as imported",
                 {**import_evidence("staging"), "policy_revision": REVISION}),
    ]
    assert m.versions[2].stage == "staging"


@pytest.mark.parametrize("version", [staged(2), champion(2)])
def test_an_import_of_the_stage_a_version_is_in_only_records_it(version: Version) -> None:
    verdicts = Verdicts()
    m = model(version, verdicts=verdicts)
    events = m.request(2, import_request(version.stage))
    assert kinds(events) == ["ImportSettled", "Decided:import_apply", "Imported"]
    imported = only(Imported, events)
    assert (imported.from_stage, imported.to_stage) == (version.stage, version.stage)
    assert imported.reason == f"mlflow fraud v3: already in {version.stage}"
    assert m.versions[2].stage == version.stage
    assert verdicts.asked == []  # nothing is crowned again


def test_an_import_of_stage_none_demotes_a_staged_version() -> None:
    m = model(staged(2))
    events = m.request(2, import_request("none"))
    assert kinds(events) == ["ImportSettled", "Decided:import_apply", "Demoted", "Imported"]
    assert events[2] == Demoted(2, "staging", "none", "manual", import_evidence("none"), actor="alice")
    assert only(Imported, events).from_stage == "staging"
    assert m.versions[2].stage == "none"


@pytest.mark.parametrize("version,actor,to_stage,detail", [
    pytest.param(fresh(2), "mallory", "production", "mallory is not an approver for this model",
                 id="not approver, even before validation"),
    pytest.param(Version(2, "none", validated=True, registered_by="alice"), "alice", "staging",
                 "separation of duties", id="own version"),
    pytest.param(Version(2, "none", validated=True, registered_by="ci"), "alice", "archived",
                 "an import never archives", id="to archived"),
    pytest.param(Version(2, "none", validated=True, blocked="rejected", registered_by="ci"), "alice", "staging",
                 "the version is rejected", id="blocked"),
    pytest.param(Version(2, "archived", validated=True, registered_by="ci"), "alice", "production",
                 "the version is archived here; restore it first", id="archived"),
])
def test_an_import_that_may_not_be_applied_is_refused(version: Version, actor: str, to_stage: Stage,
                                                      detail: str) -> None:
    m = model(champion(1), version)
    events = m.request(2, import_request(to_stage, actor))
    assert kinds(events) == ["ImportSettled", "Decided:import_refuse", "ImportRefused"]
    refused = only(ImportRefused, events)
    assert (refused.version, refused.from_stage, refused.to_stage, refused.actor) == (2, version.stage, to_stage, actor)
    assert detail in refused.reason
    assert refused.evidence == import_evidence(to_stage, actor)
    assert stages(m) == {1: "production", 2: version.stage}
    assert m.versions[2].pending_import is None


def test_a_waiting_import_refused_at_validation_leaves_the_version_unstaged() -> None:
    # zoe asked while an approver; the policy no longer lists her.
    waiting = PendingImport("staging", "zoe", "as in mlflow", IMPORTED_FROM, REQUEST_ID)
    m = model(fresh(2, pending_import=waiting))
    events = m.validate(2, CHECKS)
    assert kinds(events) == ["Validated", "ImportSettled", "Decided:import_refuse", "ImportRefused"]
    assert (m.versions[2].stage, m.versions[2].validated, m.versions[2].pending_import) == ("none", True, None)


def test_an_altered_imported_champion_is_quarantined_and_not_imported() -> None:
    m = model(champion(1), Version(2, "none", validated=True, registered_by="ci"), verdicts=Verdicts(altered=[2]))
    events = m.request(2, import_request("production"))
    assert events == [ImportSettled(2), Decided("import_apply"), Decided("quarantined"),
                      Quarantined(2, "none", ALTERED.message, ALTERED.evidence)]
    assert stages(m) == {1: "production", 2: "none"}
    assert m.versions[2].blocked == "quarantined"


def test_an_import_claim_keeps_a_validated_version_out_of_automatic_staging() -> None:
    source = dict(IMPORTED_FROM)
    m = model(fresh(2, offline(0.99)))
    events = m.claim_import(2, source, REQUEST_ID)
    claim = PendingImport("claimed", "", "", IMPORTED_FROM, REQUEST_ID)
    assert events == [ImportWaiting(2, claim)]
    source["version"] = 99  # the claim keeps its own copy
    assert m.validate(2, CHECKS) == [Validated(2)]
    assert (m.versions[2].stage, m.versions[2].validated, m.versions[2].pending_import) == ("none", True, claim)


def test_an_approvers_import_request_settles_a_validated_claim() -> None:
    m = model(fresh(2))
    m.claim_import(2, IMPORTED_FROM, REQUEST_ID)
    m.validate(2, CHECKS)
    events = m.request(2, import_request("staging"))
    assert kinds(events) == ["ImportSettled", "Decided:import_apply", "Promoted", "Imported"]
    assert (m.versions[2].stage, m.versions[2].pending_import) == ("staging", None)


def test_an_import_request_before_validation_replaces_the_claim() -> None:
    m = model(fresh(2))
    m.claim_import(2, IMPORTED_FROM, SECOND_REQUEST_ID)
    events = m.request(2, import_request("staging"))
    request = PendingImport("staging", "alice", "as in mlflow", IMPORTED_FROM, REQUEST_ID)
    assert events == [ImportWaiting(2, request)]
    assert m.versions[2].pending_import == request
    assert kinds(m.validate(2, CHECKS)) == ["Validated", "ImportSettled", "Decided:import_apply", "Promoted",
                                            "Imported"]


# ---------------------------------------------------------------------------- judge


@pytest.mark.parametrize("auc", [0.95, 0.905, 0.85])
def test_judge_is_what_decide_promotion_says_against_the_champion(auc: float) -> None:
    m = model(champion(1, 0.90), staged(2, offline(auc)))
    expected = decide_promotion("staging", None, GATED, [offline(auc)], Champion(1, [offline(0.90, seq=1)]), "ci")
    assert m.judge(2) == expected
    assert m.judge(2).promote is (auc == 0.95)


def test_a_champion_is_judged_against_no_one() -> None:
    m = model(champion(1, 0.90), staged(2))
    decision = m.judge(1)
    assert decision == decide_promotion("production", None, GATED, [offline(0.90, seq=1)], None, "ci")
    gate = {g.gate: g for g in decision.gates}["champion:auc"]
    assert gate.passed and "no champion yet" in gate.detail
    assert decision.promote is False  # not in staging


def test_a_production_version_is_judged_against_the_other_production_version_when_a_view_shows_two() -> None:
    """The API's explain reads a version and the model's champion in two statements: when a
    promotion commits between them, the version it explains is judged against the champion the
    view names, not against itself."""
    m = model(champion(1, 0.95), champion(2, 0.90))
    assert m.judge(1) == decide_promotion("production", None, GATED, [offline(0.95, seq=1)],
                                          Champion(2, [offline(0.90, seq=1)]), "ci")


def test_without_a_champion_a_candidate_has_nothing_to_beat() -> None:
    m = model(staged(2, offline(0.91)))
    assert m.judge(2) == decide_promotion("staging", None, GATED, [offline(0.91)], None, "ci")
    assert m.judge(2).promote is True


def test_judge_sees_blocks_and_the_authors_results() -> None:
    m = model(Version(2, "staging", blocked="quarantined", registered_by="ci", results=[offline(0.99)]),
              staged(3, offline(0.99, evaluator="ci")))  # ci registered it
    assert m.judge(2).promote is False
    assert m.judge(3).ignored == (offline(0.99, evaluator="ci"),)


def test_judging_changes_nothing() -> None:
    m = model(champion(1, 0.90), staged(2, offline(0.95)))
    m.judge(2)
    assert stages(m) == {1: "production", 2: "staging"}
    assert m.evaluate(2, live(0.99)) == []  # and leaves no events behind for the next command


# ---------------------------------------------------------------------------- restore_target


def test_restore_target_prefers_the_champions_predecessor() -> None:
    versions = [retired(1, superseded=1), retired(2, superseded=2)]
    assert restore_target(versions, previous_champion=1) == 1


@pytest.mark.parametrize("previous", [None, 7])
def test_restore_target_otherwise_takes_the_most_recently_superseded(previous: int | None) -> None:
    versions = [retired(5, superseded=20), retired(3, superseded=30), retired(4, superseded=10)]
    assert restore_target(versions, previous_champion=previous) == 3


def test_restore_target_never_takes_a_blocked_version() -> None:
    versions = [retired(1, superseded=1), retired(2, superseded=2, blocked="rejected")]
    assert restore_target(versions, previous_champion=2) == 1
    assert restore_target([retired(2, superseded=2, blocked="quarantined")], previous_champion=2) is None


def test_restore_target_takes_only_superseded_versions_in_stage_none() -> None:
    versions = [Version(1, "none", validated=True),  # never a champion
                Version(2, "archived", superseded=5),
                Version(3, "staging", superseded=6)]
    assert restore_target(versions, previous_champion=1) is None
    assert restore_target([], previous_champion=None) is None


# ---------------------------------------------------------------------------- the model's own state


def test_the_model_works_on_copies_of_the_versions_it_is_given() -> None:
    results = [offline(0.95)]
    approvals = {"none": frozenset({"bob"})}
    original = staged(2, *results, approvals=approvals)
    given_results, given_approvals = original.results, original.approvals
    m = model(champion(1), original, rule=TWO_APPROVALS)

    m.versions[2].results.append(offline(0.10, seq=3))
    m.request(2, ask("alice"))  # a pending vote, kept on the model's copy
    m.reject(2, WHY, REJECTION)

    assert m.versions[2] is not original
    assert original.results is given_results and original.results == [offline(0.95)]
    assert original.approvals is given_approvals and original.approvals == {"none": frozenset({"bob"})}
    assert (original.stage, original.blocked) == ("staging", None)
    assert m.versions[2].approvals == {"none": frozenset({"bob"}), "production": frozenset({"alice"})}


def test_the_versions_are_keyed_by_number_and_the_champion_is_the_production_one() -> None:
    m = model(fresh(3), champion(1), staged(2))
    assert sorted(m.versions) == [1, 2, 3]
    assert all(m.versions[n].number == n for n in m.versions)
    assert m.champion is m.versions[1]
    assert model(fresh(3)).champion is None


def test_a_supersession_is_ordered_after_every_one_loaded() -> None:
    m = model(retired(1, superseded=41), champion(2, previous_champion=1), staged(3))
    evaluate(m, 3, offline(0.95))
    assert m.versions[2].superseded == 42
    assert restore_target(m.versions.values(), previous_champion=None) == 2
    events = evaluate(m, 3, live(0.50))  # v3 falls: its predecessor, v2, comes back
    assert only(Promoted, events).version == 2
    assert stages(m) == {1: "none", 2: "production", 3: "none"}


def test_each_command_returns_only_its_own_events() -> None:
    m = model(champion(1, 0.90), fresh(2))
    assert kinds(m.validate(2, CHECKS)) == ["Promoted"]
    assert kinds(evaluate(m, 2, offline(0.88))) == ["Decided:held", "Held"]
    assert kinds(evaluate(m, 2, offline(0.95, seq=3))) == ["Demoted", "Promoted", "Decided:promoted"]
    assert evaluate(m, 2, live(0.95)) == []
