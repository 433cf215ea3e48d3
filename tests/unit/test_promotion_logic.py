"""Promotion decisions: gates, the champion comparison, rollback, restore targets and manual
requests, as plain functions over plain data."""

from __future__ import annotations

from collections.abc import Iterable
from textwrap import dedent

import pytest

from shared.domain.promotion import (
    Champion,
    Gate,
    Restorable,
    Result,
    authored_evaluation,
    champion_gate,
    choose_restore,
    decide_late_rejection,
    decide_manual,
    decide_promotion,
    decide_rollback,
    evaluate_gates,
    independent_results,
    latest_per_suite,
    threshold_gates,
)
from shared.policy import ChampionRule, Rule, Threshold, parse_policy


def rule_from(yaml_body: str) -> Rule:
    """The only rule of a one-rule policy; `yaml_body` holds the rule's keys."""
    body = dedent(yaml_body).strip("\n").replace("\n", "\n    ")
    return parse_policy(f'rules:\n  - match: "*"\n    {body}\n').rules[0]


def result(suite: str = "smoke", metrics: dict[str, float] | None = None, *, seq: int = 1,
           environment: str = "offline", passed: bool | None = True) -> Result:
    return Result(suite=suite, environment=environment, metrics=metrics or {}, passed=passed, seq=seq)


def by_name(gates: Iterable[Gate]) -> dict[str, Gate]:
    return {g.gate: g for g in gates}


# ---------------------------------------------------------------------------- latest_per_suite


def test_latest_per_suite_keeps_the_highest_seq_of_each_suite_whatever_the_order() -> None:
    newer, older = result("smoke", {"auc": 0.9}, seq=5), result("smoke", {"auc": 0.5}, seq=2)
    other = result("bias", {"gap": 0.1}, seq=3)
    assert latest_per_suite([newer, other, older]) == {"smoke": newer, "bias": other}
    assert latest_per_suite([older, newer, other]) == {"smoke": newer, "bias": other}


def test_latest_per_suite_ignores_production_results() -> None:
    offline = result("smoke", {"auc": 0.9}, seq=1)
    production = result("smoke", {"auc": 0.1}, seq=9, environment="production")
    assert latest_per_suite([offline, production]) == {"smoke": offline}
    assert latest_per_suite([production]) == {}


@pytest.mark.parametrize("environment", ["offline", "staging"])
def test_latest_per_suite_counts_every_pre_production_environment(environment: str) -> None:
    r = result("smoke", seq=1, environment=environment)
    assert latest_per_suite([r]) == {"smoke": r}


def test_latest_per_suite_of_nothing_is_empty() -> None:
    assert latest_per_suite([]) == {}


# ---------------------------------------------------------------------------- suite gates


def test_a_required_suite_without_a_result_fails() -> None:
    rule = Rule(match="*", required_suites=("smoke",))
    gates = evaluate_gates(rule, [result("other", seq=1)], None)
    assert [(g.gate, g.passed) for g in gates] == [("suite:smoke", False)]
    assert "no result" in gates[0].detail
    assert gates[0].evidence == {"suite": "smoke"}


def test_a_required_suite_that_reported_a_failure_fails() -> None:
    rule = Rule(match="*", required_suites=("smoke",))
    (gate,) = evaluate_gates(rule, [result("smoke", passed=False)], None)
    assert (gate.gate, gate.passed) == ("suite:smoke", False)
    assert "failure" in gate.detail


@pytest.mark.parametrize("passed", [True, None])
def test_a_required_suite_with_a_result_that_did_not_fail_holds(passed: bool | None) -> None:
    rule = Rule(match="*", required_suites=("smoke",))
    (gate,) = evaluate_gates(rule, [result("smoke", passed=passed)], None)
    assert (gate.gate, gate.passed) == ("suite:smoke", True)


@pytest.mark.parametrize("older,newer,expected", [
    (False, True, True),   # a rerun that passes clears an earlier failure
    (True, False, False),  # a later failure counts against an earlier pass
])
def test_only_the_latest_result_of_a_required_suite_counts(older: bool, newer: bool, expected: bool) -> None:
    rule = Rule(match="*", required_suites=("smoke",))
    results = [result("smoke", passed=newer, seq=2), result("smoke", passed=older, seq=1)]
    (gate,) = evaluate_gates(rule, results, None)
    assert gate.passed is expected


def test_a_production_result_does_not_satisfy_a_required_suite() -> None:
    rule = Rule(match="*", required_suites=("smoke",))
    (gate,) = evaluate_gates(rule, [result("smoke", environment="production")], None)
    assert gate.passed is False


def test_a_failing_production_result_does_not_hide_a_passing_offline_one() -> None:
    rule = Rule(match="*", required_suites=("smoke",))
    results = [result("smoke", passed=True, seq=1),
               result("smoke", passed=False, seq=2, environment="production")]
    (gate,) = evaluate_gates(rule, results, None)
    assert gate.passed is True


def test_every_required_suite_gets_its_own_gate_in_policy_order() -> None:
    rule = rule_from("required_suites: [smoke, bias, load]")
    gates = evaluate_gates(rule, [result("bias"), result("smoke", passed=False)], None)
    assert [(g.gate, g.passed) for g in gates] == [
        ("suite:smoke", False), ("suite:bias", True), ("suite:load", False)]


# ---------------------------------------------------------------------------- threshold gates


def test_a_threshold_nobody_reported_fails() -> None:
    (gate,) = threshold_gates([Threshold("auc", ">=", 0.9)], {"smoke": result("smoke", {"f1": 0.99})})
    assert (gate.gate, gate.passed) == ("threshold:auc", False)
    assert "no result reports auc" in gate.detail
    assert gate.evidence == {"metric": "auc", "threshold": ">= 0.9"}


def test_a_threshold_over_no_results_fails() -> None:
    (gate,) = threshold_gates([Threshold("auc", ">=", 0.9)], {})
    assert gate.passed is False


@pytest.mark.parametrize("op,value,actual,holds", [
    (">=", 0.9, 0.95, True),
    (">=", 0.9, 0.9, True),
    (">=", 0.9, 0.89, False),
    (">", 0.9, 0.9, False),
    (">", 0.9, 0.91, True),
    ("<=", 0.1, 0.1, True),
    ("<=", 0.1, 0.2, False),
    ("<", 0.1, 0.1, False),
    ("<", 0.1, 0.05, True),
    ("==", 1.0, 1.0, True),
    ("==", 1.0, 0.5, False),
    (">=", 0.3, 0.1 + 0.2, True),  # float noise still meets the boundary
])
def test_a_reported_threshold_holds_or_breaks(op: str, value: float, actual: float, holds: bool) -> None:
    (gate,) = threshold_gates([Threshold("auc", op, value)], {"smoke": result("smoke", {"auc": actual})})
    assert gate.passed is holds
    assert gate.evidence["actual"] == {"smoke": actual}
    assert ("holds" if holds else "breaks") in gate.detail


def test_an_unqualified_threshold_must_hold_in_every_suite_that_reports_the_metric() -> None:
    latest = {"smoke": result("smoke", {"auc": 0.95}), "holdout": result("holdout", {"auc": 0.85}),
              "bias": result("bias", {"gap": 0.01})}
    (gate,) = threshold_gates([Threshold("auc", ">=", 0.9)], latest)
    assert gate.passed is False
    assert gate.evidence["actual"] == {"smoke": 0.95, "holdout": 0.85}  # bias does not report auc


def test_an_unqualified_threshold_holds_when_every_reporting_suite_meets_it() -> None:
    latest = {"smoke": result("smoke", {"auc": 0.95}), "holdout": result("holdout", {"auc": 0.91})}
    (gate,) = threshold_gates([Threshold("auc", ">=", 0.9)], latest)
    assert gate.passed is True


def test_a_suite_qualified_threshold_judges_only_that_suite() -> None:
    latest = {"smoke": result("smoke", {"auc": 0.5}), "holdout": result("holdout", {"auc": 0.95})}
    (gate,) = threshold_gates([Threshold("auc", ">=", 0.9, suite="holdout")], latest)
    assert (gate.gate, gate.passed) == ("threshold:holdout/auc", True)
    assert gate.evidence["actual"] == {"holdout": 0.95}


def test_a_suite_qualified_threshold_breaks_on_its_suite_whatever_the_others_say() -> None:
    latest = {"smoke": result("smoke", {"auc": 0.99}), "holdout": result("holdout", {"auc": 0.5})}
    (gate,) = threshold_gates([Threshold("auc", ">=", 0.9, suite="holdout")], latest)
    assert gate.passed is False


@pytest.mark.parametrize("latest", [
    {"smoke": result("smoke", {"auc": 0.99})},          # another suite reports it: not enough
    {"holdout": result("holdout", {"f1": 0.99})},       # the suite reports other metrics only
    {},
])
def test_a_suite_qualified_threshold_without_its_suites_metric_fails(latest: dict[str, Result]) -> None:
    (gate,) = threshold_gates([Threshold("auc", ">=", 0.9, suite="holdout")], latest)
    assert gate.passed is False
    assert "no result reports holdout/auc" in gate.detail


def test_thresholds_are_judged_on_the_latest_result_of_each_suite_only() -> None:
    rule = rule_from('thresholds: {auc: ">= 0.9"}')
    good_then_bad = [result("smoke", {"auc": 0.95}, seq=1), result("smoke", {"auc": 0.8}, seq=2)]
    bad_then_good = [result("smoke", {"auc": 0.8}, seq=1), result("smoke", {"auc": 0.95}, seq=2)]
    assert by_name(evaluate_gates(rule, good_then_bad, None))["threshold:auc"].passed is False
    assert by_name(evaluate_gates(rule, bad_then_good, None))["threshold:auc"].passed is True


def test_an_older_result_does_not_supply_a_metric_the_latest_one_lacks() -> None:
    rule = rule_from('thresholds: {auc: ">= 0.9"}')
    results = [result("smoke", {"auc": 0.95}, seq=1), result("smoke", {"f1": 0.9}, seq=2)]
    assert by_name(evaluate_gates(rule, results, None))["threshold:auc"].passed is False


def test_production_results_are_ignored_by_threshold_gates() -> None:
    rule = rule_from('thresholds: {auc: ">= 0.9"}')
    only_production = [result("smoke", {"auc": 0.99}, environment="production")]
    assert by_name(evaluate_gates(rule, only_production, None))["threshold:auc"].passed is False
    breaking_production = [result("smoke", {"auc": 0.95}, seq=1),
                           result("smoke", {"auc": 0.1}, seq=2, environment="production")]
    assert by_name(evaluate_gates(rule, breaking_production, None))["threshold:auc"].passed is True


def test_thresholds_from_a_policy_file_are_gated_in_order() -> None:
    rule = rule_from("""
        thresholds:
          auc: ">= 0.9"
          holdout/latency_ms: "< 50"
    """)
    gates = evaluate_gates(rule, [result("holdout", {"auc": 0.93, "latency_ms": 50.0})], None)
    assert [(g.gate, g.passed) for g in gates] == [("threshold:auc", True),
                                                   ("threshold:holdout/latency_ms", False)]


# ---------------------------------------------------------------------------- champion gate


def champion(version: int = 3, **metrics: float) -> Champion:
    return Champion(version=version, results=[result("smoke", dict(metrics), seq=1)])


def higher(min_improvement: float = 0.0) -> Rule:
    return Rule(match="*", champion=ChampionRule("auc", "higher", min_improvement))


def lower(min_improvement: float = 0.0) -> Rule:
    return Rule(match="*", champion=ChampionRule("loss", "lower", min_improvement))


def test_no_champion_rule_means_no_champion_gate() -> None:
    assert champion_gate(Rule(match="*"), [result("smoke", {"auc": 0.1})], champion(auc=0.9)) is None
    assert evaluate_gates(Rule(match="*"), [], champion(auc=0.9)) == ()


def test_without_a_champion_there_is_nothing_to_beat() -> None:
    gate = champion_gate(higher(0.05), [], None)
    assert gate is not None
    assert (gate.gate, gate.passed) == ("champion:auc", True)
    assert "no champion" in gate.detail


@pytest.mark.parametrize("candidate,incumbent,improvement,beats", [
    (0.90, 0.80, 0.0, True),
    (0.80, 0.80, 0.0, True),     # equal meets a zero improvement
    (0.79, 0.80, 0.0, False),
    (0.85, 0.80, 0.05, True),    # exactly at min_improvement (0.80 + 0.05 is not exactly 0.85)
    (0.8499, 0.80, 0.05, False),
    (0.86, 0.80, 0.05, True),
])
def test_champion_higher_is_better(candidate: float, incumbent: float, improvement: float, beats: bool) -> None:
    gate = champion_gate(higher(improvement), [result("smoke", {"auc": candidate})], champion(auc=incumbent))
    assert gate is not None and gate.passed is beats
    assert gate.evidence["candidate"] == candidate and gate.evidence["champion"] == incumbent
    assert gate.evidence["champion_version"] == 3 and gate.evidence["direction"] == "higher"
    assert ("does not beat" in gate.detail) is not beats


@pytest.mark.parametrize("candidate,incumbent,improvement,beats", [
    (0.10, 0.20, 0.0, True),
    (0.20, 0.20, 0.0, True),
    (0.21, 0.20, 0.0, False),
    (0.15, 0.20, 0.05, True),    # exactly at min_improvement
    (0.1501, 0.20, 0.05, False),
    (0.90, 0.20, 0.0, False),    # higher is worse here
])
def test_champion_lower_is_better(candidate: float, incumbent: float, improvement: float, beats: bool) -> None:
    gate = champion_gate(lower(improvement), [result("smoke", {"loss": candidate})], champion(loss=incumbent))
    assert gate is not None and gate.passed is beats
    assert gate.evidence["direction"] == "lower"


def test_a_higher_is_better_champion_is_not_beaten_by_a_lower_value() -> None:
    gate = champion_gate(higher(), [result("smoke", {"auc": 0.1})], champion(auc=0.9))
    assert gate is not None and gate.passed is False


def test_a_candidate_without_the_metric_fails_the_champion_gate() -> None:
    gate = champion_gate(higher(), [result("smoke", {"f1": 0.99})], champion(auc=0.5))
    assert gate is not None and gate.passed is False
    assert "no result reports auc" in gate.detail
    assert gate.evidence["champion_version"] == 3


def test_a_champion_without_the_metric_is_no_obstacle() -> None:
    gate = champion_gate(higher(0.5), [result("smoke", {"auc": 0.1})], champion(f1=0.9))
    assert gate is not None and gate.passed is True
    assert "has no auc result" in gate.detail


def test_the_champion_gate_compares_the_newest_pre_production_values() -> None:
    candidate = [result("smoke", {"auc": 0.70}, seq=1), result("holdout", {"auc": 0.95}, seq=2),
                 result("smoke", {"auc": 0.99}, seq=3, environment="production")]
    incumbent = Champion(7, [result("smoke", {"auc": 0.99}, seq=1), result("smoke", {"auc": 0.90}, seq=2),
                             result("live", {"auc": 0.10}, seq=3, environment="production")])
    gate = champion_gate(higher(0.01), candidate, incumbent)
    assert gate is not None and gate.passed is True
    assert (gate.evidence["candidate"], gate.evidence["champion"]) == (0.95, 0.90)


def test_only_production_results_for_the_candidate_count_as_none() -> None:
    gate = champion_gate(higher(), [result("smoke", {"auc": 0.99}, environment="production")], champion(auc=0.5))
    assert gate is not None and gate.passed is False


def test_a_champion_rule_from_a_policy_file() -> None:
    rule = rule_from("champion: {metric: auc, direction: higher, min_improvement: 0.01}")
    gates = by_name(evaluate_gates(rule, [result("smoke", {"auc": 0.905})], champion(auc=0.9)))
    assert gates["champion:auc"].passed is False
    gates = by_name(evaluate_gates(rule, [result("smoke", {"auc": 0.91})], champion(auc=0.9)))
    assert gates["champion:auc"].passed is True


# ---------------------------------------------------------------------------- decide_promotion


FULL_RULE = rule_from("""
    required_suites: [smoke]
    thresholds: {auc: ">= 0.9"}
    champion: {metric: auc, direction: higher, min_improvement: 0.01}
""")
GOOD = [result("smoke", {"auc": 0.95})]


def test_everything_holding_promotes_from_staging() -> None:
    decision = decide_promotion("staging", None, FULL_RULE, GOOD, champion(auc=0.9))
    assert decision.promote is True
    assert [g.gate for g in decision.gates] == ["suite:smoke", "threshold:auc", "champion:auc"]
    assert decision.failing == ()
    assert decision.evidence() == {"gates": [g.as_dict() for g in decision.gates]}


@pytest.mark.parametrize("stage", ["none", "production", "archived"])
def test_policy_promotes_only_from_staging(stage: str) -> None:
    decision = decide_promotion(stage, None, FULL_RULE, GOOD, None)
    assert decision.promote is False
    assert all(g.passed for g in decision.gates)  # the gates held; the stage is what stops it


@pytest.mark.parametrize("blocked", ["rejected", "quarantined"])
def test_a_blocked_version_is_never_promoted(blocked: str) -> None:
    decision = decide_promotion("staging", blocked, FULL_RULE, GOOD, None)
    assert decision.promote is False


@pytest.mark.parametrize("results,failing", [
    ([], ["suite:smoke", "threshold:auc", "champion:auc"]),
    ([result("smoke", {"auc": 0.95}, passed=False)], ["suite:smoke"]),
    ([result("smoke", {"auc": 0.85})], ["threshold:auc", "champion:auc"]),
    ([result("smoke", {"auc": 0.905})], ["champion:auc"]),
])
def test_any_failing_gate_stops_a_promotion(results: list[Result], failing: list[str]) -> None:
    decision = decide_promotion("staging", None, FULL_RULE, results, champion(auc=0.9))
    assert decision.promote is False
    assert [g.gate for g in decision.failing] == failing


def test_a_rule_without_gates_promotes_any_staging_version() -> None:
    decision = decide_promotion("staging", None, Rule(match="*"), [], None)
    assert decision.promote is True and decision.gates == ()


def test_gate_as_dict_flattens_the_evidence() -> None:
    gate = Gate("suite:smoke", True, "ok", {"suite": "smoke"})
    assert gate.as_dict() == {"gate": "suite:smoke", "passed": True, "detail": "ok", "suite": "smoke"}


# ---------------------------------------------------------------------------- decide_rollback


ROLLBACK = rule_from("""
    rollback:
      auc: ">= 0.85"
      live/latency_ms: "<= 100"
""")


def production(suite: str = "live", **metrics: float) -> Result:
    return result(suite, dict(metrics), seq=10, environment="production")


@pytest.mark.parametrize("environment", ["offline", "staging"])
def test_rollback_judges_only_production_results(environment: str) -> None:
    r = result("live", {"auc": 0.1, "latency_ms": 999.0}, environment=environment)
    assert decide_rollback(ROLLBACK, r) == ()


def test_a_healthy_production_result_keeps_the_champion() -> None:
    assert decide_rollback(ROLLBACK, production(auc=0.9, latency_ms=100.0)) == ()


def test_a_degraded_production_result_names_every_broken_threshold() -> None:
    gates = decide_rollback(ROLLBACK, production(auc=0.8, latency_ms=150.0))
    assert [g.gate for g in gates] == ["threshold:auc", "threshold:live/latency_ms"]
    assert all(not g.passed for g in gates)
    assert gates[0].evidence["actual"] == {"live": 0.8}


def test_rollback_returns_only_the_thresholds_that_break() -> None:
    gates = decide_rollback(ROLLBACK, production(auc=0.8, latency_ms=20.0))
    assert [g.gate for g in gates] == ["threshold:auc"]


def test_rollback_ignores_metrics_the_result_lacks() -> None:
    assert decide_rollback(ROLLBACK, production(f1=0.0)) == ()
    assert decide_rollback(ROLLBACK, production()) == ()
    assert [g.gate for g in decide_rollback(ROLLBACK, production(latency_ms=500.0))] == [
        "threshold:live/latency_ms"]


def test_a_suite_qualified_rollback_threshold_ignores_other_suites() -> None:
    assert decide_rollback(ROLLBACK, production("canary", latency_ms=500.0)) == ()
    gates = decide_rollback(ROLLBACK, production("canary", auc=0.5, latency_ms=500.0))
    assert [g.gate for g in gates] == ["threshold:auc"]


def test_no_rollback_thresholds_means_no_rollback() -> None:
    assert decide_rollback(Rule(match="*"), production(auc=0.0)) == ()


# ---------------------------------------------------------------------------- choose_restore


def test_restore_prefers_the_previous_champion_when_restorable() -> None:
    candidates = [Restorable(4, superseded_seq=20), Restorable(2, superseded_seq=10)]
    assert choose_restore(candidates, previous_champion=2) == 2


def test_restore_falls_back_to_the_most_recently_superseded() -> None:
    candidates = [Restorable(2, superseded_seq=10), Restorable(5, superseded_seq=30),
                  Restorable(4, superseded_seq=20)]
    assert choose_restore(candidates, previous_champion=1) == 5
    assert choose_restore(candidates, previous_champion=None) == 5


def test_restore_orders_by_supersession_not_version_number() -> None:
    candidates = [Restorable(9, superseded_seq=1), Restorable(3, superseded_seq=2)]
    assert choose_restore(candidates, previous_champion=None) == 3


@pytest.mark.parametrize("previous", [None, 4])
def test_nothing_to_restore(previous: int | None) -> None:
    assert choose_restore([], previous) is None


# ---------------------------------------------------------------------------- decide_manual


def approvers_rule(required: int) -> Rule:
    return rule_from(f"approvers: [alice, bob, carol]\nrequired_approvals: {required}")


def manual(rule: Rule, *, actor: str = "alice", to_stage: str = "production", registered_by: str | None = "dave",
           stage: str = "staging", blocked: str | None = None, validated: bool = True,
           approvals: Iterable[str] = ()):
    return decide_manual(rule, actor=actor, to_stage=to_stage, registered_by=registered_by,
                         stage=stage, blocked=blocked, validated=validated, approvals=approvals)


def test_a_non_approver_is_refused() -> None:
    decision = manual(approvers_rule(1), actor="mallory")
    assert decision.outcome == "refuse"
    assert "mallory is not an approver" in decision.detail


def test_nobody_may_move_a_version_by_hand_when_the_rule_lists_no_approvers() -> None:
    assert manual(Rule(match="*"), actor="alice").outcome == "refuse"


def test_the_registering_actor_cannot_approve_their_own_version() -> None:
    decision = manual(approvers_rule(1), actor="alice", registered_by="alice")
    assert decision.outcome == "refuse"
    assert "separation of duties" in decision.detail


def test_an_unknown_registering_actor_does_not_block_approval() -> None:
    assert manual(approvers_rule(1), registered_by=None).outcome == "approve"


@pytest.mark.parametrize("to_stage", ["production", "staging"])
def test_an_archived_version_must_be_restored_first(to_stage: str) -> None:
    decision = manual(approvers_rule(1), stage="archived", to_stage=to_stage)
    assert decision.outcome == "refuse" and "restore it first" in decision.detail


@pytest.mark.parametrize("actor", ["alice", "mallory", "dave"])
def test_restoring_an_archived_version_is_left_to_archival(actor: str) -> None:
    """A request to bring an archived version back to none is archival's to decide (and to
    refuse): promotion neither refuses nor records it, whoever asks."""
    assert manual(approvers_rule(1), actor=actor, stage="archived", to_stage="none").outcome == "elsewhere"


@pytest.mark.parametrize("to_stage", ["production", "staging"])
def test_a_blocked_version_can_never_be_promoted_by_hand(to_stage: str) -> None:
    decision = manual(approvers_rule(1), stage="none", to_stage=to_stage, blocked="rejected")
    assert decision.outcome == "refuse"
    assert "rejected" in decision.detail


def test_a_blocked_version_may_still_be_archived_by_hand() -> None:
    assert manual(approvers_rule(1), stage="none", to_stage="archived", blocked="rejected").outcome == "approve"


@pytest.mark.parametrize("stage", ["none", "staging", "production"])
def test_moving_to_the_stage_it_is_in_is_refused(stage: str) -> None:
    decision = manual(approvers_rule(1), stage=stage, to_stage=stage)
    assert decision.outcome == "refuse" and f"already in {stage}" in decision.detail


@pytest.mark.parametrize("required,prior,outcome,count", [
    (1, [], "approve", 1),
    (2, [], "pending", 1),
    (2, ["bob"], "approve", 2),
    (2, ["alice"], "pending", 1),          # the actor's own earlier request is not a second approval
    (3, ["bob"], "pending", 2),
    (3, ["bob", "bob", "bob"], "pending", 2),  # the same approver never counts twice
    (3, ["bob", "carol"], "approve", 3),
    (3, ["carol", "bob", "carol", "alice"], "approve", 3),
])
def test_production_needs_the_required_distinct_approvals(required: int, prior: list[str], outcome: str,
                                                          count: int) -> None:
    decision = manual(approvers_rule(required), approvals=prior)
    assert decision.outcome == outcome
    assert decision.needed == required
    assert len(decision.approvers) == count
    assert decision.approvers == tuple(sorted(set(decision.approvers)))
    assert "alice" in decision.approvers
    if outcome == "pending":
        assert decision.detail == f"{count} of {required} approvals"
    else:
        assert decision.detail == f"approved by {', '.join(decision.approvers)}"


@pytest.mark.parametrize("to_stage,stage", [("staging", "none"), ("none", "staging"),
                                            ("archived", "staging"), ("staging", "production")])
def test_moves_other_than_to_production_need_only_one_approval(to_stage: str, stage: str) -> None:
    decision = manual(approvers_rule(3), to_stage=to_stage, stage=stage)
    assert decision.outcome == "approve"
    assert decision.needed == 1
    assert decision.approvers == ("alice",)


# ---------------------------------------------------------------------------- separation of duties


GATED = """
required_suites: [offline-eval]
thresholds: {auc: ">= 0.9"}
approvers: [alice, bob]
"""


def by(evaluator: str | None, auc: float = 0.95, *, seq: int = 1, environment: str = "offline") -> Result:
    return Result("offline-eval", environment, {"auc": auc}, True, seq, evaluator)


def test_evaluator_not_author_defaults_to_true_for_rules_with_thresholds_only() -> None:
    assert rule_from(GATED).evaluator_must_differ is True
    assert rule_from("required_suites: [smoke]").evaluator_must_differ is False
    assert rule_from(GATED + "evaluator_not_author: false").evaluator_must_differ is False
    assert rule_from("required_suites: [smoke]\nevaluator_not_author: true").evaluator_must_differ is True
    assert rule_from(GATED).to_dict()["evaluator_not_author"] is True


def test_evaluator_not_author_must_be_a_boolean() -> None:
    with pytest.raises(ValueError, match="evaluator_not_author: expected true or false"):
        rule_from(GATED + "evaluator_not_author: sometimes")


def test_a_result_from_the_versions_author_does_not_count() -> None:
    rule = rule_from(GATED)
    why = authored_evaluation(rule, evaluator="ci", registered_by="ci", environment="offline")
    assert why is not None and "ci registered this version" in why and "evaluator_not_author" in why
    assert authored_evaluation(rule, evaluator="qa", registered_by="ci", environment="offline") is None


@pytest.mark.parametrize("evaluator,registered_by,environment", [
    (None, "ci", "offline"),        # no evaluator named: nothing to match
    ("ci", None, "offline"),        # no known author
    ("ci", "ci", "production"),     # monitors only ever roll back
])
def test_results_that_cannot_be_matched_or_only_roll_back_count(evaluator: str | None, registered_by: str | None,
                                                                 environment: str) -> None:
    assert authored_evaluation(rule_from(GATED), evaluator=evaluator, registered_by=registered_by,
                               environment=environment) is None


def test_without_the_rule_the_author_may_evaluate() -> None:
    rule = rule_from(GATED + "evaluator_not_author: false")
    assert authored_evaluation(rule, evaluator="ci", registered_by="ci", environment="offline") is None
    assert decide_promotion("staging", None, rule, [by("ci")], None, "ci").promote


def test_a_version_its_author_evaluated_alone_is_held_and_the_reason_says_why() -> None:
    decision = decide_promotion("staging", None, rule_from(GATED), [by("ci")], None, "ci")
    assert not decision.promote
    assert decision.ignored == (by("ci"),)
    assert {g.gate for g in decision.failing} == {"suite:offline-eval", "threshold:auc"}
    assert "1 result(s) from ci, who registered this version, do not count (evaluator_not_author)" \
        in decision.reason()
    assert decision.evidence()["ignored_evaluations"] == [{"suite": "offline-eval", "evaluator": "ci", "seq": 1}]


def test_an_independent_result_counts_beside_the_authors() -> None:
    rule = rule_from(GATED)
    results = [by("ci", 0.99, seq=1), by("qa", 0.91, seq=2)]
    decision = decide_promotion("staging", None, rule, results, None, "ci")
    assert decision.promote and decision.ignored == (results[0],)
    counted, ignored = independent_results(rule, results, "ci")
    assert counted == [results[1]] and ignored == [results[0]]


def test_the_authors_newer_result_does_not_override_an_independent_one() -> None:
    rule = rule_from(GATED)
    gates = by_name(evaluate_gates(rule, [by("qa", 0.80, seq=1), by("ci", 0.99, seq=2)], None, "ci"))
    assert not gates["threshold:auc"].passed and "0.8" in gates["threshold:auc"].detail


@pytest.mark.parametrize("to_stage", ["staging", "production"])
def test_an_unvalidated_version_cannot_be_moved_up_by_hand(to_stage: str) -> None:
    decision = manual(approvers_rule(1), stage="none", to_stage=to_stage, validated=False)
    assert decision.outcome == "refuse"
    assert decision.detail == f"the version has not passed validation yet; it cannot be moved to {to_stage} " \
                              "before it does"


@pytest.mark.parametrize("to_stage", ["none", "archived"])
def test_an_unvalidated_version_may_still_be_moved_down_by_hand(to_stage: str) -> None:
    assert manual(approvers_rule(1), stage="staging", to_stage=to_stage, validated=False).outcome == "approve"


def test_a_rejection_in_production_demotes_and_restores() -> None:
    late = decide_late_rejection("production", "unsafe_pickle: posix.system")
    assert (late.demote, late.restore) == (True, True)
    assert "unsafe_pickle: posix.system" in late.detail and "previous champion restored" in late.detail


def test_a_rejection_in_staging_demotes_without_restoring() -> None:
    late = decide_late_rejection("staging", "checksum_mismatch")
    assert (late.demote, late.restore) == (True, False) and "staging" in late.detail


@pytest.mark.parametrize("stage", ["none", "archived"])
def test_a_rejection_below_staging_only_blocks(stage: str) -> None:
    late = decide_late_rejection(stage, "x")
    assert (late.demote, late.restore) == (False, False)
