"""The promotion policy: exact threshold and champion arithmetic, first-match rules, and every
mistake in a policy file reported at its line."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import timedelta
from pathlib import Path
from textwrap import dedent

import pytest

from shared.policy import (
    DEFAULT_POLICY,
    DEFAULT_POLICY_YAML,
    DEFAULT_RULE,
    ChampionRule,
    Policy,
    PolicyError,
    Retention,
    Rule,
    Threshold,
    ValidationRule,
    load_policy,
    parse_duration,
    parse_policy,
    parse_size,
)

INFRA_POLICY = Path(__file__).resolve().parents[2] / "infra" / "policy.yaml"
MARK = "# <-"


def rule_yaml(body: str, match: str = "m-*") -> str:
    """A one-rule policy; `body` is the rule's keys, indented as in a file."""
    return f'rules:\n  - match: "{match}"\n' + dedent(body).strip("\n").replace("\n", "\n    ").join(
        ["    ", "\n"])


def one_rule(body: str = "") -> Rule:
    return parse_policy(rule_yaml(body) if body else 'rules:\n  - match: "m-*"\n').rules[0]


def problem(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    return str(caught.value)


def marked_line(text: str) -> int:
    """The 1-based line carrying the `# <-` marker."""
    lines = [n for n, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, "a case marks exactly one line"
    return lines[0]


# ---------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("op,value,actual,expected", [
    (">=", 0.9, 0.9, True), (">=", 0.9, 0.91, True), (">=", 0.9, 0.89, False),
    (">", 0.9, 0.9, False), (">", 0.9, 0.91, True), (">", 0.9, 0.89, False),
    ("<=", 50, 50, True), ("<=", 50, 50.5, False), ("<=", 50, 49.5, True),
    ("<", 50, 50, False), ("<", 50, 50.5, False), ("<", 50, 49.5, True),
    ("==", 1, 1, True), ("==", 1, 1.0001, False), ("==", 1, 0.9999, False),
    (">=", -1, -1, True), (">=", -1, -0.5, True), (">=", -1, -1.5, False),
    (">=", 0, 0, True), ("<", 0, -1e-9, True), (">", 1e6, 1e6 + 1, True),
])
def test_every_operator_at_above_and_below_its_boundary(op: str, value: float, actual: float,
                                                         expected: bool) -> None:
    assert Threshold("m", op, float(value)).holds(actual) is expected


@pytest.mark.parametrize("op,expected", [(">=", True), ("<=", True), ("==", True), (">", False), ("<", False)])
def test_float_noise_counts_as_the_boundary(op: str, expected: bool) -> None:
    noisy = 0.1 + 0.2  # 0.30000000000000004
    assert noisy != 0.3
    assert Threshold("m", op, 0.3).holds(noisy) is expected
    assert Threshold("m", op, 0.1 + 0.2).holds(0.3) is expected


def test_nan_never_holds() -> None:
    for op in (">=", ">", "<=", "<", "=="):
        assert not Threshold("m", op, 0.5).holds(float("nan"))


def test_infinite_metrics_compare_plainly() -> None:
    assert Threshold("m", ">=", 0.9).holds(float("inf"))
    assert not Threshold("m", "<=", 50).holds(float("inf"))


@pytest.mark.parametrize("spec,op,value,text", [
    (">= 0.9", ">=", 0.9, ">= 0.9"),
    (">= 0.90", ">=", 0.9, ">= 0.9"),
    (">=0.9", ">=", 0.9, ">= 0.9"),
    ("  <   50  ", "<", 50.0, "< 50"),
    ("<= 50.0", "<=", 50.0, "<= 50"),
    ("== 1e-3", "==", 0.001, "== 0.001"),
    ("> -1", ">", -1.0, "> -1"),
    ("< 1e-05", "<", 1e-05, "< 1e-05"),
    ("<= 123456789", "<=", 123456789.0, "<= 123456789"),
])
def test_threshold_syntax(spec: str, op: str, value: float, text: str) -> None:
    (threshold,) = one_rule(f'thresholds:\n  auc: "{spec}"').thresholds
    assert (threshold.metric, threshold.op, threshold.value, threshold.suite) == ("auc", op, value, None)
    assert str(threshold) == text and threshold.key == "auc"


def test_suite_qualified_thresholds() -> None:
    rule = one_rule("""
        thresholds:
          auc: ">= 0.9"
          offline-eval/latency_p99_ms: "<= 50"
          offline-eval/auc: "> 0.8"
        rollback:
          prod-monitor/error_rate: "< 0.01"
    """)
    plain, latency, suite_auc = rule.thresholds
    assert plain.suite is None and plain.key == "auc"
    assert (latency.suite, latency.metric, latency.key) == ("offline-eval", "latency_p99_ms",
                                                            "offline-eval/latency_p99_ms")
    assert (suite_auc.suite, suite_auc.metric) == ("offline-eval", "auc")
    assert rule.rollback == (Threshold("error_rate", "<", 0.01, "prod-monitor"),)
    assert rule.to_dict()["thresholds"] == {"auc": ">= 0.9", "offline-eval/latency_p99_ms": "<= 50",
                                            "offline-eval/auc": "> 0.8"}


def test_only_the_first_slash_separates_the_suite() -> None:
    (threshold,) = one_rule('thresholds:\n  qa/group/metric: ">= 1"').thresholds
    assert (threshold.suite, threshold.metric, threshold.key) == ("qa", "group/metric", "qa/group/metric")


# ---------------------------------------------------------------------------- champion


@pytest.mark.parametrize("candidate,expected", [(0.81, True), (0.80, True), (0.7999, False), (0.79, False),
                                                (0.70, False)])
def test_champion_higher(candidate: float, expected: bool) -> None:
    assert ChampionRule("auc", "higher", 0.01).beats(candidate, 0.79) is expected


@pytest.mark.parametrize("candidate,expected", [(38.0, True), (40.0, True), (40.001, False), (42.0, False),
                                                (45.0, False)])
def test_champion_lower(candidate: float, expected: bool) -> None:
    assert ChampionRule("latency", "lower", 2.0).beats(candidate, 42.0) is expected


def test_champion_exactly_at_min_improvement_despite_float_noise() -> None:
    assert 0.2 + 0.1 > 0.3  # the target candidate must reach is 0.30000000000000004
    assert ChampionRule("auc", "higher", 0.1).beats(0.3, 0.2)
    assert 0.3 - 0.1 < 0.2  # 0.19999999999999998
    assert ChampionRule("loss", "lower", 0.1).beats(0.2, 0.3)
    assert not ChampionRule("auc", "higher", 0.1).beats(0.2999, 0.2)
    assert not ChampionRule("loss", "lower", 0.1).beats(0.2001, 0.3)


def test_champion_with_no_min_improvement_accepts_a_tie() -> None:
    assert ChampionRule("auc").beats(0.9, 0.9)
    assert ChampionRule("auc", "lower").beats(0.9, 0.9)
    assert not ChampionRule("auc").beats(0.89, 0.9)
    assert not ChampionRule("auc", "lower").beats(0.91, 0.9)


def test_champion_never_beaten_by_nan() -> None:
    assert not ChampionRule("auc").beats(float("nan"), 0.5)
    assert not ChampionRule("auc", "lower").beats(0.5, float("nan"))


def test_champion_parsing_and_defaults() -> None:
    assert one_rule("champion: {metric: auc}").champion == ChampionRule("auc", "higher", 0.0)
    assert one_rule("champion:\n  metric: p99\n  direction: lower\n  min_improvement: 5").champion == \
        ChampionRule("p99", "lower", 5.0)
    assert one_rule("champion: null").champion is None
    assert one_rule("champion:").champion is None
    assert one_rule().champion is None


# ---------------------------------------------------------------------------- rules


def test_first_match_wins_and_unmatched_names_fall_back_to_the_default() -> None:
    policy = parse_policy(dedent("""\
        rules:
          - match: "fraud-special"
            required_suites: [special]
          - match: "fraud-*"
            required_suites: [offline-eval]
          - match: "fraud-special"
            required_suites: [never]
          - match: "demo-?"
            required_suites: [demo]
    """))
    assert policy.rule_for("fraud-special").required_suites == ("special",)
    assert policy.rule_for("fraud-detector").required_suites == ("offline-eval",)
    assert policy.rule_for("demo-1").required_suites == ("demo",)
    assert policy.rule_for("demo-12") is DEFAULT_RULE
    assert policy.rule_for("Fraud-detector") is DEFAULT_RULE  # case-sensitive globs
    assert policy.rule_for("churn") is DEFAULT_RULE
    assert DEFAULT_RULE.match == "*" and DEFAULT_RULE.required_suites == ("smoke",)


def test_a_catch_all_rule_shadows_the_default() -> None:
    policy = parse_policy('rules:\n  - match: "*"\n    auto_staging: false\n')
    assert policy.rule_for("anything").auto_staging is False


def test_an_empty_rule_takes_every_default() -> None:
    assert one_rule() == Rule(match="m-*")
    assert Rule(match="x") == Rule(match="x", auto_staging=True, required_suites=(), thresholds=(),
                                   champion=None, approvers=(), required_approvals=1, rollback=(),
                                   retention=Retention(), validation=ValidationRule())
    assert Retention() == Retention(2, timedelta(days=7), timedelta(days=30))
    assert ValidationRule() == ValidationRule(5 * 1024**3, (), None, ())


def test_null_collections_mean_empty() -> None:
    rule = one_rule("""
        required_suites:
        thresholds:
        approvers:
        rollback:
        retention:
        validation:
    """)
    assert rule == Rule(match="m-*")


def test_a_full_rule() -> None:
    rule = one_rule("""
        auto_staging: false
        required_suites: [offline-eval, fairness, offline-eval]
        thresholds: {auc: ">= 0.9"}
        champion: {metric: auc, direction: higher, min_improvement: 0.01}
        approvers: [alice, bob, alice]
        required_approvals: 2
        rollback: {auc: ">= 0.85"}
        retention: {keep_restorable: 0, rejected_grace: 1d, staging_max_age: null}
        validation:
          max_size_bytes: 2GiB
          required_metadata: [signature, dataset, description, run_id]
          allowed_formats: [pickle, onnx, safetensors]
          pickle_allow: ["mylib.models.*", "numpy.core.multiarray._reconstruct"]
    """)
    assert rule.auto_staging is False
    assert rule.required_suites == ("offline-eval", "fairness")  # duplicates dropped, order kept
    assert rule.approvers == ("alice", "bob") and rule.required_approvals == 2
    assert rule.retention == Retention(0, timedelta(days=1), None)
    assert rule.validation == ValidationRule(
        2 * 1024**3, ("signature", "dataset", "description", "run_id"), ("pickle", "onnx", "safetensors"),
        ("mylib.models.*", "numpy.core.multiarray._reconstruct"))


def test_anchors_and_merge_keys_share_settings() -> None:
    policy = parse_policy(dedent("""\
        rules:
          - &strict
            match: "fraud-*"
            thresholds: &gates {auc: ">= 0.9"}
            approvers: [alice, bob]
          - <<: *strict
            match: "risk-*"
            required_approvals: 2
          - match: "churn-*"
            rollback: *gates
    """))
    fraud, risk, churn = policy.rules
    assert risk.match == "risk-*" and risk.thresholds == fraud.thresholds and risk.approvers == ("alice", "bob")
    assert risk.required_approvals == 2
    assert churn.rollback == fraud.thresholds


def test_public_types_are_frozen_and_hashable() -> None:
    policy = parse_policy(INFRA_POLICY.read_text())
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.rules[0].match = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.revision = "x"  # type: ignore[misc]
    assert hash(policy) == hash(parse_policy(INFRA_POLICY.read_text()))


# ---------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize("text,expected", [
    ("7d", timedelta(days=7)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
    ("45s", timedelta(seconds=45)), ("1w", timedelta(weeks=1)), ("1d12h", timedelta(hours=36)),
    ("0s", timedelta(0)), (3600, timedelta(hours=1)), (0, timedelta(0)),
])
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert one_rule(f"retention: {{rejected_grace: {text}}}").retention.rejected_grace == expected


@pytest.mark.parametrize("text", ["7", "7x", "-1d", "1.5h", "7 d", "d", "7D", "", "1d 2h",
                                  -5, 1.5, True, None, []])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text,expected", [
    (1024, 1024), ("100B", 100), ("500MB", 500_000_000), ("2GiB", 2 * 1024**3), ("10KiB", 10_240),
    ("1KB", 1000), ("3MiB", 3 * 1024**2), ("1.5GB", 1_500_000_000), ("1.5KiB", 1536), ("5gib", 5 * 1024**3),
    ("2 GiB", 2 * 1024**3), ("1TiB", 1024**4), ("1TB", 10**12),
])
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected
    assert one_rule(f"validation: {{max_size_bytes: {text}}}").validation.max_size_bytes == expected


@pytest.mark.parametrize("text", ["5XB", "-1MB", "GiB", "1.5B", "0.1KiB", "0MB", "1e3MB", "5 G", "",
                                  0, -1, 1.5, True])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_null_size_means_no_limit() -> None:
    assert one_rule("validation: {max_size_bytes: null}").validation.max_size_bytes is None


# ---------------------------------------------------------------------------- rejections, at their line

R = "rules:\n  - match: x\n"  # a valid start: the cases below add the mistake

REJECTIONS = {
    "root is a list": ("- match: x  # <-\n", "expected a mapping with a 'rules' list, got a list"),
    "root is a string": ("just text  # <-\n", "expected a mapping with a 'rules' list, got str (9 characters)"),
    "rules missing": ("# a comment first\n{}  # <-\n", "missing required key 'rules'"),
    "rules misspelt": ("# a comment first\nrule:  # <-\n  - match: x\n",
                       "rule: unknown key 'rule'; expected one of rules"),
    "rules empty": ("# leading comment\nrules: []  # <-\n",
                    "rules: expected a non-empty list of rules, got an empty list"),
    "rules null": ("rules:  # <-\n", "rules: expected a non-empty list of rules, got null"),
    "rules a mapping": ("rules:\n  match: x  # <-\n", "rules: expected a non-empty list of rules, got a mapping"),
    "rule not a mapping": (R + "  - fraud-*  # <-\n", "rules[1]: expected a mapping, got 'fraud-*'"),
    "rule without match": ("rules:\n  - match: a\n  - auto_staging: true  # <-\n    required_suites: []\n",
                           "rules[1]: missing required key 'match'"),
    "match empty": ('rules:\n  - match: ""  # <-\n', "rules[0].match: expected a non-empty string, got ''"),
    "match not a string": ("rules:\n  - match: 12  # <-\n",
                           "rules[0].match: expected a non-empty string, got 12"),
    "unknown top-level key": (R + "version: 2  # <-\n", "version: unknown key 'version'"),
    "unknown rule key": (R + "    auto_stageing: true  # <-\n",
                         "rules[0].auto_stageing: unknown key 'auto_stageing'; expected one of match,"),
    "unknown champion key": (R + "    champion:\n      metric: auc\n      better: higher  # <-\n",
                             "rules[0].champion.better: unknown key"),
    "unknown retention key": (R + "    retention:\n      keep: 3  # <-\n",
                              "rules[0].retention.keep: unknown key"),
    "unknown validation key": (R + "    validation:\n      max_size: 1GB  # <-\n",
                               "rules[0].validation.max_size: unknown key"),
    "threshold word": (R + "    thresholds:\n      auc: high  # <-\n",
                       "rules[0].thresholds.auc: expected 'OP VALUE' such as '>= 0.9'"),
    "threshold bare number": (R + "    thresholds:\n      auc: 0.9  # <-\n",
                              "got 0.9"),
    "threshold reversed op": (R + '    thresholds:\n      auc: "=> 0.9"  # <-\n',
                              "got '=> 0.9'"),
    "threshold single =": (R + '    thresholds:\n      auc: "= 0.9"  # <-\n', "got '= 0.9'"),
    "threshold !=": (R + '    thresholds:\n      auc: "!= 0.9"  # <-\n', "got '!= 0.9'"),
    "threshold no value": (R + '    thresholds:\n      auc: ">="  # <-\n', "got '>='"),
    "threshold word value": (R + '    thresholds:\n      auc: ">= high"  # <-\n',
                             "got '>= high'"),
    "threshold two values": (R + '    thresholds:\n      auc: ">= 0.9 0.8"  # <-\n',
                             "got '>= 0.9 0.8'"),
    "threshold empty": (R + '    thresholds:\n      auc: ""  # <-\n', "got ''"),
    "threshold list": (R + '    thresholds:\n      auc: [">= 0.9"]  # <-\n', "got a list"),
    "threshold value on next line": (R + '    thresholds:\n      auc:\n        high  # <-\n',
                                     "got 'high'"),
    "thresholds a list": (R + '    thresholds: [">= 0.9"]  # <-\n',
                          "rules[0].thresholds: expected a mapping of metric to 'OP VALUE'"),
    "threshold infinite": (R + '    thresholds:\n      auc: ">= inf"  # <-\n',
                           "must be a finite number"),
    "threshold nan": (R + '    thresholds:\n      auc: "<= nan"  # <-\n', "must be a finite number"),
    "threshold key without suite": (R + '    thresholds:\n      /auc: ">= 1"  # <-\n',
                                    "expected a key 'metric' or 'suite/metric', got '/auc'"),
    "threshold key without metric": (R + '    thresholds:\n      qa/: ">= 1"  # <-\n',
                                     "got 'qa/'"),
    "threshold numeric key": (R + '    thresholds:\n      1: ">= 1"  # <-\n', "got 1"),
    "rollback bad": (R + '    rollback:\n      auc: "at least 0.85"  # <-\n',
                     "rules[0].rollback.auc: expected 'OP VALUE'"),
    "champion not a mapping": (R + "    champion: auc  # <-\n",
                               "rules[0].champion: expected a mapping, got 'auc'"),
    "champion without metric": (R + "    champion:\n      direction: higher  # <-\n",
                                "rules[0].champion: missing required key 'metric'"),
    "champion bad direction": (R + "    champion: {metric: auc, direction: up}  # <-\n",
                               "rules[0].champion.direction: expected 'higher' or 'lower', got 'up'"),
    "negative min_improvement": (R + "    champion:\n      metric: auc\n"
                                 "      min_improvement: -0.01  # <-\n",
                                 "rules[0].champion.min_improvement: must not be negative, got -0.01"),
    "infinite min_improvement": (R + "    champion:\n      metric: auc\n"
                                 "      min_improvement: .inf  # <-\n", "expected a finite number, got inf"),
    "nan min_improvement": (R + "    champion:\n      metric: auc\n"
                           "      min_improvement: .nan  # <-\n", "expected a finite number, got nan"),
    "string min_improvement": (R + '    champion:\n      metric: auc\n'
                               '      min_improvement: "0.01"  # <-\n', "expected a number, got '0.01'"),
    "required_approvals 0": (R + "    required_approvals: 0  # <-\n",
                             "rules[0].required_approvals: must be at least 1, got 0"),
    "required_approvals negative": (R + "    required_approvals: -2  # <-\n", "at least 1"),
    "required_approvals a string": (R + '    required_approvals: "1"  # <-\n',
                                    "expected an integer, got '1'"),
    "required_approvals a bool": (R + "    required_approvals: true  # <-\n",
                                  "expected an integer, got True"),
    "more approvals than approvers": (R + "    approvers: [alice]\n    required_approvals: 2  # <-\n",
                                      "needs 2 distinct approvals but only 1 approver(s) are listed"),
    "keep_restorable negative": (R + "    retention:\n      keep_restorable: -1  # <-\n",
                                 "rules[0].retention.keep_restorable: must be at least 0, got -1"),
    "keep_restorable fractional": (R + "    retention: {keep_restorable: 1.5}  # <-\n",
                                   "expected an integer, got 1.5"),
    "unknown metadata": (R + "    validation:\n      required_metadata:\n        - signature\n"
                         "        - owner  # <-\n",
                         "rules[0].validation.required_metadata[1]: unknown metadata 'owner': expected one of"),
    "bad duration": (R + "    retention:\n      rejected_grace: 7days  # <-\n",
                     "rules[0].retention.rejected_grace: expected a duration such as '7d'"),
    "negative duration": (R + "    retention:\n      rejected_grace: -60  # <-\n",
                          "expected a duration"),
    "null rejected_grace": (R + "    retention:\n      rejected_grace: null  # <-\n",
                            "got null"),
    "zero staging_max_age": (R + "    retention:\n      staging_max_age: 0s  # <-\n",
                             "must be longer than 0 (use null for never)"),
    "bad size": (R + "    validation:\n      max_size_bytes: 2GIGS  # <-\n",
                 "rules[0].validation.max_size_bytes: expected a size in bytes or such as '500MB'"),
    "zero size": (R + "    validation:\n      max_size_bytes: 0  # <-\n",
                  "size must be a positive whole number of bytes"),
    "empty allowed_formats": (R + "    validation:\n      allowed_formats: []  # <-\n",
                              "an empty list rejects every artifact"),
    "bad format": (R + "    validation:\n      allowed_formats: [onnx, ONNX]  # <-\n",
                   "rules[0].validation.allowed_formats[1]: expected a format name"),
    "bad pickle pattern": (R + "    validation:\n      pickle_allow: [mylib]  # <-\n",
                           "expected a 'module.name' pattern"),
    "auto_staging not a bool": (R + "    auto_staging: maybe  # <-\n",
                                "rules[0].auto_staging: expected true or false, got 'maybe'"),
    "required_suites a string": (R + "    required_suites: offline-eval  # <-\n",
                                 "rules[0].required_suites: expected a list, got 'offline-eval'"),
    "required suite empty": (R + '    required_suites:\n      - smoke\n      - ""  # <-\n',
                             "rules[0].required_suites[1]: expected a non-empty string"),
    "retention a list": (R + "    retention: [2]  # <-\n", "rules[0].retention: expected a mapping"),
    "approver empty": (R + '    approvers: [alice, ""]  # <-\n',
                       "rules[0].approvers[1]: expected a non-empty string, got ''"),
    "approver blank": (R + '    approvers:\n      - alice\n      - "   "  # <-\n',
                       "rules[0].approvers[1]: expected a non-empty string, got '   '"),
    "approver a number": (R + "    approvers:\n      - 42  # <-\n",
                          "rules[0].approvers[0]: expected a non-empty string, got 42"),
    "approver null": (R + "    approvers:\n      - alice\n      -  # <-\n",
                      "rules[0].approvers[1]: expected a non-empty string, got null"),
    "approver a mapping": (R + "    approvers:\n      - name: alice  # <-\n",
                           "rules[0].approvers[0]: expected a non-empty string, got a mapping"),
    "approvers a string": (R + "    approvers: alice  # <-\n",
                           "rules[0].approvers: expected a list, got 'alice'"),
    "duplicate top-level key": (R + "rules:  # <-\n  - match: y\n",
                                "rules: duplicate key (first defined on line 1)"),
    "duplicate rule key": (R + "    auto_staging: true\n    auto_staging: false  # <-\n",
                           "rules[0].auto_staging: duplicate key (first defined on line 3)"),
    "duplicate threshold": (R + '    thresholds:\n      auc: ">= 0.9"\n      "auc": ">= 0.5"  # <-\n',
                            "rules[0].thresholds.auc: duplicate key (first defined on line 4)"),
    "duplicate in flow mapping": (R + "    champion: {metric: auc, metric: loss}  # <-\n",
                                  "rules[0].champion.metric: duplicate key (first defined on line 3)"),
    "duplicate in second rule": (R + "  - match: y\n    match: z  # <-\n",
                                 "rules[1].match: duplicate key (first defined on line 3)"),
    "yaml unquoted >=": (R + "    thresholds:\n      auc: >= 0.9  # <-\n",
                         "invalid YAML: expected chomping or indentation indicators"),
    "yaml mapping in a plain value": ("rules:\n  - match: a: b  # <-\n",
                                      "invalid YAML: mapping values are not allowed here"),
    "yaml bad indentation": (R + "   auto_staging: true  # <-\n", "invalid YAML: expected <block end>"),
    "yaml tab": (R + "\tauto_staging: true  # <-\n", "invalid YAML: found character '\\t'"),
    "yaml undefined alias": (R + "    approvers: *nope  # <-\n", "invalid YAML: found undefined alias"),
    "yaml unclosed flow": (R + "    approvers: [a, b\n    auto_staging: true  # <-\n",
                           "invalid YAML: expected ',' or ']'"),
    "yaml second document": (R + "---  # <-\nrules: []\n",
                             "invalid YAML: expected a single document in the stream"),
    "yaml python tag": ("rules:\n  - match: !!python/object/apply:os.system [ls]  # <-\n",
                        "invalid YAML: could not determine a constructor"),
    "yaml control character": ('rules:\n  - match: "x\x07"  # <-\n', "invalid YAML: unacceptable character"),
}


@pytest.mark.parametrize("text,expected", list(REJECTIONS.values()), ids=list(REJECTIONS))
def test_each_rejection_names_file_and_line(text: str, expected: str) -> None:
    message = problem(text)
    found = [line for line in message.splitlines() if expected in line]
    assert len(found) == 1, message
    assert found[0].startswith(f"policy.yaml:{marked_line(text)}: "), message


SEVERAL = {"rules misspelt", "duplicate top-level key"}  # a misspelt or repeated key has consequences


@pytest.mark.parametrize("text", [text for name, (text, _) in REJECTIONS.items() if name not in SEVERAL])
def test_each_rejection_is_one_line(text: str) -> None:
    assert len(problem(text).splitlines()) == 1


def test_several_problems_one_line_each_in_file_order() -> None:
    text = dedent("""\
        rules:
          - match: "fraud-*"
            thresholds:
              auc: high                       # line 4
              latency_p99_ms: "<= 50"
            champion: {metric: auc, direction: up}   # line 6
            colour: blue                      # line 7
          - auto_staging: true                # line 8: no match
            retention: {rejected_grace: soon} # line 9
    """)
    lines = problem(text).splitlines()
    assert [re.match(r"policy\.yaml:(\d+): ", line)[1] for line in lines] == ["4", "6", "7", "8", "9"]
    assert "rules[0].thresholds.auc" in lines[0] and "rules[0].champion.direction" in lines[1]
    assert "rules[0].colour: unknown key" in lines[2] and "rules[1]: missing required key 'match'" in lines[3]
    assert "rules[1].retention.rejected_grace" in lines[4]


def test_a_duplicate_key_is_reported_once_with_both_lines() -> None:
    text = "rules:\n  - match: x\n    thresholds:\n      auc: '>= 0.9'\n      auc: '>= 0.5'\n"
    assert problem(text) == "policy.yaml:5: rules[0].thresholds.auc: duplicate key (first defined on line 4)"


def test_an_empty_document_is_rejected() -> None:
    for text in ("", "# only a comment\n", "null\n"):
        assert problem(text).startswith("policy.yaml:1: the policy is empty")
    assert problem("---\n").startswith("policy.yaml:2: the policy is empty")  # the empty node after ---


def test_the_default_source_name() -> None:
    with pytest.raises(PolicyError, match=r"^<policy>:1: "):
        parse_policy("rules: []")


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


def test_an_error_inside_an_anchor_is_reported_where_it_is_written() -> None:
    text = dedent("""\
        rules:
          - match: "a-*"
            thresholds: &gates
              auc: "about 0.9"   # <-
          - match: "b-*"
            rollback: *gates
    """)
    assert problem(text).startswith(f"policy.yaml:{marked_line(text)}: rules[0].thresholds.auc: ")


# ---------------------------------------------------------------------------- revision

BASE = """\
rules:
  - match: "fraud-*"
    required_suites: [offline-eval, fairness]
    thresholds:
      auc: ">= 0.90"
      latency_p99_ms: "<= 50"
    champion: {metric: auc, min_improvement: 0.01}
    approvers: [alice, bob]
    retention: {rejected_grace: 1d}
  - match: "*"
"""

SAME_MEANING = """\
# The same policy, written differently.
rules:
- match: 'fraud-*'            # comments do not matter
  approvers:
    - bob
    - alice
  thresholds: {latency_p99_ms: '<=50.0', auc: '>=0.9'}
  required_suites:
    - fairness
    - offline-eval
  champion:
    metric: auc
    direction: higher          # the default, spelled out
    min_improvement: 1.0e-2
  retention: {rejected_grace: 24h, keep_restorable: 2}
  auto_staging: true

- {match: "*"}
"""


def test_revision_format() -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", parse_policy(BASE).revision)


def test_revision_survives_reformatting_and_comments() -> None:
    assert parse_policy(SAME_MEANING).revision == parse_policy(BASE).revision
    assert parse_policy("# header\n" + BASE.replace("\n", "  \n")).revision == parse_policy(BASE).revision


def test_revision_ignores_the_source_name() -> None:
    assert parse_policy(BASE, "a.yaml").revision == parse_policy(BASE, "b.yaml").revision


@pytest.mark.parametrize("old,new", [
    ('auc: ">= 0.90"', 'auc: ">= 0.91"'),
    ('auc: ">= 0.90"', 'auc: "> 0.90"'),
    ('auc: ">= 0.90"', 'offline-eval/auc: ">= 0.90"'),
    ("min_improvement: 0.01", "min_improvement: 0.02"),
    ("{metric: auc,", "{metric: auc, direction: lower,"),
    ('match: "fraud-*"', 'match: "fraud-?"'),
    ("[alice, bob]", "[alice]"),
    ("rejected_grace: 1d", "rejected_grace: 2d"),
    ("[offline-eval, fairness]", "[offline-eval]"),
    ("    approvers: [alice, bob]\n", "    approvers: [alice, bob]\n    required_approvals: 2\n"),
    ('  - match: "*"\n', '  - match: "*"\n    auto_staging: false\n'),
])
def test_revision_changes_with_meaning(old: str, new: str) -> None:
    assert old in BASE
    assert parse_policy(BASE.replace(old, new)).revision != parse_policy(BASE).revision


def test_revision_changes_when_rules_are_reordered() -> None:
    first, second = BASE.split('  - match: "*"\n')[0], '  - match: "*"\n'
    swapped = "rules:\n" + second + first.removeprefix("rules:\n")
    assert parse_policy(swapped).revision != parse_policy(BASE).revision


# ---------------------------------------------------------------------------- default and shipped policies


def test_the_built_in_default() -> None:
    policy = parse_policy(DEFAULT_POLICY_YAML)
    assert policy.rules == DEFAULT_POLICY.rules and policy.revision == DEFAULT_POLICY.revision
    (rule,) = policy.rules
    assert rule == Rule(match="*", auto_staging=True, required_suites=("smoke",))
    assert rule.champion is None and rule.thresholds == () and rule.rollback == ()
    assert DEFAULT_RULE == rule
    assert DEFAULT_POLICY_YAML.count("#") >= 10  # it is shown to users: it explains itself


def test_load_policy_none_is_the_default() -> None:
    assert load_policy(None) is DEFAULT_POLICY
    assert load_policy(None).rule_for("anything") is DEFAULT_RULE


def test_the_shipped_policy_parses() -> None:
    policy = load_policy(INFRA_POLICY)
    assert policy.source == str(INFRA_POLICY)
    demo, fraud = policy.rule_for("demo-fraud"), policy.rule_for("fraud-detector")
    for rule in (demo, fraud):
        assert rule.required_suites == ("offline-eval",)
        assert {t.key: str(t) for t in rule.thresholds} == {"auc": ">= 0.9", "latency_p99_ms": "<= 50"}
        assert rule.champion == ChampionRule("auc", "higher", 0.01)
        assert rule.approvers == ("alice", "bob") and rule.required_approvals == 1
        assert rule.rollback == (Threshold("auc", ">=", 0.85),)
        assert rule.retention == Retention(2, timedelta(days=1), timedelta(days=30))
        formats = ("pickle", "joblib", "onnx", "safetensors", "pt")
        assert rule.validation == ValidationRule(5 * 1024**3, (), formats)
    assert demo.match == "demo-*" and fraud.match == "fraud-*"
    catch_all = policy.rule_for("churn")
    assert catch_all.match == "*" and dataclasses.replace(catch_all) == DEFAULT_RULE


# ---------------------------------------------------------------------------- to_dict


@pytest.mark.parametrize("policy", [
    pytest.param(lambda: DEFAULT_POLICY, id="default"),
    pytest.param(lambda: load_policy(INFRA_POLICY), id="infra"),
    pytest.param(lambda: parse_policy(BASE), id="base"),
])
def test_to_dict_is_json_serialisable(policy) -> None:
    described = policy().to_dict()
    assert json.loads(json.dumps(described)) == described


def test_to_dict_shape() -> None:
    described = parse_policy(BASE, "p.yaml").to_dict()
    assert described["source"] == "p.yaml" and described["revision"] == parse_policy(BASE).revision
    fraud = described["rules"][0]
    assert fraud["thresholds"] == {"auc": ">= 0.9", "latency_p99_ms": "<= 50"}
    assert fraud["champion"] == {"metric": "auc", "direction": "higher", "min_improvement": 0.01}
    assert fraud["retention"] == {"keep_restorable": 2, "rejected_grace": 86400, "staging_max_age": 2592000}
    assert fraud["validation"] == {"max_size_bytes": 5 * 1024**3, "max_files": 1000, "required_metadata": [],
                                   "allowed_formats": None, "pickle_allow": []}
    assert described["rules"][1]["champion"] is None and described["rules"][1]["rollback"] == {}
    no_expiry = one_rule("retention: {staging_max_age: null}").to_dict()
    assert no_expiry["retention"]["staging_max_age"] is None


# ---------------------------------------------------------------------------- load_policy


def test_load_policy_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BASE, encoding="utf-8")
    for given in (path, str(path)):
        policy = load_policy(given)
        assert isinstance(policy, Policy) and policy.source == str(path)
        assert policy.revision == parse_policy(BASE).revision


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(R + "    approvers: [alice, 7]\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=rf"^{re.escape(str(path))}:3: rules\[0\]\.approvers\[1\]: "):
        load_policy(path)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=re.escape(str(path))):
        load_policy(path)


def test_a_directory_or_undecodable_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=re.escape(str(tmp_path))):
        load_policy(tmp_path)
    binary = tmp_path / "policy.yaml"
    binary.write_bytes(b"rules:\n  - match: \xff\xfe\n")
    with pytest.raises(PolicyError, match=re.escape(str(binary))):
        load_policy(binary)
