"""The API's pure parts: cursors, ETags and conditional requests, RFC 3339 times, which version
reigned when, problem documents, roles, gate explanations, the chart, the policy dry-run."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.api import auth, cursor, dryrun, explain, presentation, problems, production
from services.api.settings import load_api_settings
from shared.policy import parse_policy
from shared.settings import SettingsError

KEY = b"k" * 32
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

POLICY = parse_policy("""
rules:
  - match: "fraud-*"
    required_suites: [offline-eval]
    thresholds: {auc: ">= 0.90", "offline-eval/latency_ms": "<= 50"}
    champion: {metric: auc, direction: higher, min_improvement: 0.01}
    rollback: {auc: ">= 0.85"}
    retention: {keep_restorable: 1, rejected_grace: 1d, staging_max_age: 30d}
  - match: "*"
    required_suites: [smoke]
""")
RULE = POLICY.rule_for("fraud-x")


# ---------------------------------------------------------------------------- cursors

def test_a_cursor_round_trips_for_its_own_query() -> None:
    scope = cursor.scope_of("models", {"prefix": "fr", "stage": None})
    token = cursor.encode({"after": "fraud-a"}, KEY, scope)
    assert cursor.decode(token, KEY, scope) == {"after": "fraud-a"}
    # opaque and URL-safe: base64url without padding, the position not readable in it
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token), token
    assert "fraud" not in token and "after" not in token


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),              # one character changed
    lambda t: t[:10],                                                 # truncated
    lambda t: t + "==",                                               # not base64url
    lambda t: "",                                                     # empty
    lambda t: "x" * 2000,                                             # too long
    lambda t: base64.urlsafe_b64encode(b'{"after":"zzz"}' + b"\0" * 16).decode().rstrip("="),  # forged MAC
])
def test_a_tampered_cursor_is_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    scope = cursor.scope_of("models", {})
    token = cursor.encode({"after": "a"}, KEY, scope)
    with pytest.raises(cursor.CursorError):
        cursor.decode(mangle(token), KEY, scope)


def test_a_cursor_is_bound_to_its_filters_and_key() -> None:
    token = cursor.encode({"seq": 10}, KEY, cursor.scope_of("audit", {"model": "a"}))
    with pytest.raises(cursor.CursorError):
        cursor.decode(token, KEY, cursor.scope_of("audit", {"model": "b"}))
    with pytest.raises(cursor.CursorError):
        cursor.decode(token, b"other" * 8, cursor.scope_of("audit", {"model": "a"}))
    # unset filters do not matter, their order neither
    assert cursor.scope_of("a", {"x": 1, "y": None}) == cursor.scope_of("a", {"x": 1})


# ---------------------------------------------------------------------------- ETags

def test_the_etag_changes_whenever_the_champion_does() -> None:
    tag = production.etag("m", 2, 40)
    assert tag.startswith('"') and tag.endswith('"')
    assert tag == production.etag("m", 2, 40)
    assert len({tag, production.etag("m", 1, 40), production.etag("m", 2, 41), production.etag("n", 2, 40)}) == 4


@pytest.mark.parametrize("header,expected", [
    (None, False), ("", False), ('"other"', False), ("*", True),
    ('"abc"', True), ('W/"abc"', True), ('"x", W/"abc"', True), ('"x" , "y"', False),
])
def test_if_none_match(header: str | None, expected: bool) -> None:
    assert production.not_modified(header, '"abc"') is expected


# ---------------------------------------------------------------------------- times

@pytest.mark.parametrize("text,expected", [
    ("2026-01-01T12:00:00Z", T0),
    ("2026-01-01t12:00:00z", T0),
    ("2026-01-01T13:30:00+01:30", T0),
    ("2026-01-01T12:00:00.5Z", T0 + timedelta(milliseconds=500)),
    ("2026-01-01T12:00:00.123456789Z", T0 + timedelta(microseconds=123456)),
    ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
])
def test_rfc3339_times_parse_to_utc(text: str, expected: datetime) -> None:
    parsed = production.parse_rfc3339(text)
    assert parsed == expected and parsed.tzinfo is UTC


@pytest.mark.parametrize("text", ["2026-01-01", "2026-01-01T12:00:00", "yesterday", "2026-13-01T00:00:00Z",
                                  "2026-02-30T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                  "2026-01-01T12:00:00+24:00", "1" * 100, "2026-01-01T12:00:00Z\x00"])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(production.TimeError):
        production.parse_rfc3339(text)


# ---------------------------------------------------------------------------- who reigned when

def change(seq: int, version: int, from_stage: str, to_stage: str, minutes: int, reason: str = "policy") -> dict:
    return {"seq": seq, "name": "fraud-x", "version": version, "from_stage": from_stage, "to_stage": to_stage,
            "reason": reason, "at": T0 + timedelta(minutes=minutes)}


HISTORY = [
    change(1, 1, "none", "staging", 0), change(2, 1, "staging", "production", 1),
    change(3, 2, "none", "staging", 5), change(4, 1, "production", "none", 6, "superseded"),
    change(5, 2, "staging", "production", 6),
    change(6, 2, "production", "none", 10, "rollback"), change(7, 1, "none", "production", 10, "rollback"),
]


@pytest.mark.parametrize("minutes,expected", [(-1, None), (0, None), (1, 1), (3, 1), (6, 2), (9, 2), (10, 1),
                                              (1000, 1)])
def test_the_version_in_production_at_a_moment(minutes: int, expected: int | None) -> None:
    found = production.production_at(HISTORY, T0 + timedelta(minutes=minutes))
    assert (found.version if found else None) == expected


def test_reigns_have_their_start_and_end() -> None:
    reigns = production.reigns(HISTORY)
    assert [(r.version, r.since, r.until) for r in reigns] == [
        (1, T0 + timedelta(minutes=1), T0 + timedelta(minutes=6)),
        (2, T0 + timedelta(minutes=6), T0 + timedelta(minutes=10)),
        (1, T0 + timedelta(minutes=10), None)]


def test_a_champion_demoted_without_successor_leaves_a_gap() -> None:
    history = [change(1, 1, "staging", "production", 0), change(2, 1, "production", "none", 5, "rollback")]
    assert production.production_at(history, T0 + timedelta(minutes=6)) is None
    assert production.production_at(history, T0 + timedelta(minutes=4)).version == 1  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- problems and roles

def test_problem_documents_follow_rfc_9457() -> None:
    doc = problems.document(problems.Problem(404, "no model named 'x'", kind="not-found"), "/api/v1/models/x")
    assert doc == {"type": "urn:modelreg:problem:not-found", "title": "Not Found", "status": 404,
                   "detail": "no model named 'x'", "instance": "/api/v1/models/x"}
    assert problems.Problem(400, "bad").title == "Bad Request"
    invalid = problems.from_validation_errors([{"loc": ("query", "limit"), "msg": "too big"}])
    assert invalid.status == 400 and invalid.detail == "query.limit: too big"
    assert problems.ProblemDocument.model_validate(doc)


@pytest.mark.parametrize("role,needed,allowed", [
    ("reader", auth.READ, True), ("reader", auth.PUBLISH, False), ("publisher", auth.PUBLISH, True),
    ("publisher", auth.EVALUATE, False), ("publisher", auth.APPROVE, False),
    ("evaluator", auth.EVALUATE, True), ("evaluator", auth.PUBLISH, False), ("evaluator", auth.APPROVE, False),
    ("approver", auth.APPROVE, True), ("approver", auth.PUBLISH, False), ("approver", auth.EVALUATE, False),
    ("admin", auth.APPROVE, True), ("admin", auth.EVALUATE, True), ("admin", auth.PUBLISH, True),
    ("admin", auth.READ, True), (None, auth.READ, False), ("root", auth.READ, False),
])
def test_roles_separate_duties_and_admin_does_all(role: str | None, needed: auth.Action, allowed: bool) -> None:
    assert auth.allows(role, needed) is allowed


@pytest.mark.parametrize("globs,name,inside", [
    (["*"], "fraud-a", True), (["fraud-*"], "fraud-a", True), (["fraud-*"], "churn-a", False),
    (["fraud-*", "churn-?"], "churn-b", True), (["fraud-[ab]"], "fraud-c", False),
])
def test_token_scopes_are_model_name_globs(globs: list[str], name: str, inside: bool) -> None:
    assert auth.Identity(1, "t", "reader", tuple(globs)).may_touch(name) is inside
    assert auth.check_scope(globs) == globs


@pytest.mark.parametrize("globs", [[], ["Fraud-*"], ["fraud/*"], ["x" * 129], [f"m{i}" for i in range(33)]])
def test_bad_token_scopes_are_refused(globs: list[str]) -> None:
    with pytest.raises(ValueError):
        auth.check_scope(globs)


def test_tokens_are_random_and_stored_only_as_hashes() -> None:
    one, two = auth.new_token(), auth.new_token()
    assert one != two and auth.looks_like_token(one) and one.startswith("mr_")
    assert auth.hash_token(one) != one and len(auth.hash_token(one)) == 64
    assert not auth.looks_like_token("mr_short") and not auth.looks_like_token(one + "\x00")


@pytest.mark.parametrize("header,token", [(None, None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"),
                                          ("Basic abc", ""), ("Bearer", ""), ("Bearer ", "")])
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert auth.bearer(header) == token


def test_token_names() -> None:
    assert auth.valid_name("alice") and auth.valid_name("ci.pipeline@team-a")
    assert not auth.valid_name("") and not auth.valid_name("-x") and not auth.valid_name("a b")


def test_api_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELREG_API_PORT", "99999")
    with pytest.raises(SettingsError, match="^MODELREG_API_PORT: "):
        load_api_settings()
    monkeypatch.setenv("MODELREG_API_PORT", "8081")
    monkeypatch.setenv("MODELREG_API_OPEN_READS", "false")
    settings = load_api_settings()
    assert settings.port == 8081 and settings.open_reads is False and settings.host == "127.0.0.1"


# ---------------------------------------------------------------------------- explain

def evaluation(seq: int, version: int, metrics: dict, *, suite: str = "offline-eval",
               environment: str = "offline", passed: bool | None = True) -> dict:
    return {"seq": seq, "name": "fraud-x", "version": version, "suite": suite, "environment": environment,
            "metrics": metrics, "passed": passed, "evaluator": "qa", "at": T0 + timedelta(seconds=seq)}


def version_row(version: int, stage: str = "staging", status: str = "validated") -> dict:
    return {"name": "fraud-x", "version": version, "stage": stage, "status": status,
            "metrics": {"auc": 0.5}}


def test_explain_names_each_gate_with_its_results_and_the_champion() -> None:
    mine = [evaluation(10, 3, {"auc": 0.80, "latency_ms": 20}), evaluation(12, 3, {"auc": 0.93, "latency_ms": 70})]
    champion = [evaluation(5, 2, {"auc": 0.95})]
    doc = explain.explain(RULE, revision="sha256:x", version=version_row(3), evaluations=mine, changes=[],
                          champion_version=2, champion_evaluations=champion)
    gates = {g["gate"]: g for g in doc["gates"]}
    assert list(gates) == ["suite:offline-eval", "threshold:auc", "threshold:offline-eval/latency_ms", "champion:auc"]
    assert gates["suite:offline-eval"]["passed"]
    assert gates["threshold:auc"]["passed"] and gates["threshold:auc"]["threshold"] == ">= 0.9"
    assert gates["threshold:auc"]["results"][0]["seq"] == 12 and gates["threshold:auc"]["results"][0]["value"] == 0.93
    latency = gates["threshold:offline-eval/latency_ms"]
    assert not latency["passed"] and latency["suite"] == "offline-eval" and "breaks" in latency["detail"]
    rival = gates["champion:auc"]
    assert not rival["passed"] and rival["champion"]["version"] == 2 and rival["champion"]["value"] == 0.95
    assert "does not beat" in rival["detail"]
    assert doc["would_promote"] is False and doc["summary"] == "held: 2 of 4 gates fail"


def test_explain_of_a_version_that_would_be_promoted_and_of_the_champion() -> None:
    mine = [evaluation(10, 3, {"auc": 0.97, "latency_ms": 10})]
    doc = explain.explain(RULE, revision="r", version=version_row(3), evaluations=mine, changes=[],
                          champion_version=2, champion_evaluations=[evaluation(5, 2, {"auc": 0.95})])
    assert doc["would_promote"] and doc["all_gates_pass"]
    crowned = explain.explain(RULE, revision="r", version=version_row(2, "production"),
                              evaluations=[evaluation(5, 2, {"auc": 0.95, "latency_ms": 5})], changes=[],
                              champion_version=2, champion_evaluations=[evaluation(5, 2, {"auc": 0.95})])
    assert crowned["summary"] == "in production" and crowned["gates"][-1]["champion"] is None


def test_a_rolled_back_or_rejected_version_is_blocked() -> None:
    rolled = [change(9, 2, "production", "none", 1, "rollback")]
    doc = explain.explain(RULE, revision="r", version=version_row(2, "none"), evaluations=[], changes=rolled,
                          champion_version=None, champion_evaluations=[])
    assert doc["blocked"] == "rolled_back" and not doc["would_promote"]
    assert explain.blocked_of(version_row(1, "none", "rejected"), []) == "rejected"
    restored = [change(9, 1, "none", "production", 1, "rollback")]
    assert explain.blocked_of(version_row(1, "production"), restored) is None


def test_production_results_never_count_for_gates() -> None:
    results = [evaluation(3, 1, {"auc": 0.99}, environment="production")]
    assert explain.latest_value(results, "auc") is None
    assert explain.key_metrics(RULE, version_row(1), results) == {"auc": 0.5}  # from registration
    assert explain.key_metrics(RULE, version_row(1), [evaluation(4, 1, {"auc": 0.91})]) == {"auc": 0.91}


def test_the_chart_metric() -> None:
    assert explain.champion_metric(RULE) == "auc"
    assert explain.champion_metric(POLICY.rule_for("other"), {"f1", "acc"}) == "acc"
    assert explain.champion_metric(POLICY.rule_for("other")) is None


# ---------------------------------------------------------------------------- UI pieces

def test_the_chart_draws_a_point_per_version_and_the_thresholds() -> None:
    points = [presentation.Point(1, 0.92, "production", True), presentation.Point(2, 0.95, "none"),
              presentation.Point(3, None, "staging")]
    svg = presentation.chart_svg("auc", points, [presentation.Line("auc >= 0.9", 0.9),
                                                 presentation.Line("rollback <b>", 0.85, "rollback")])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="point') == 3 and 'data-version="3"' in svg and "missing" in svg
    assert 'class="threshold" data-threshold="auc &gt;= 0.9"' in svg
    assert "rollback &lt;b&gt;" in svg and "<b>" not in svg  # escaped
    assert "champion" in svg
    single = presentation.chart_svg("auc", [presentation.Point(1, 0.5, "staging")], [])
    assert single.count('class="point') == 1


@pytest.mark.parametrize("change_,kind", [
    ({"from_stage": "none", "to_stage": "staging", "reason": "policy"}, "promotion"),
    ({"from_stage": "staging", "to_stage": "production", "reason": "manual"}, "promotion"),
    ({"from_stage": "production", "to_stage": "none", "reason": "superseded"}, "demotion"),
    ({"from_stage": "production", "to_stage": "none", "reason": "rollback"}, "rollback"),
    ({"from_stage": "none", "to_stage": "production", "reason": "rollback"}, "rollback"),
    ({"from_stage": "none", "to_stage": "archived", "reason": "superseded"}, "archive"),
])
def test_timeline_kinds(change_: dict, kind: str) -> None:
    assert presentation.change_kind(change_) == kind
    assert presentation.change_text({**change_, "version": 4}).startswith("v4 ")


def test_formatting_helpers() -> None:
    assert presentation.size(None) == "–" and presentation.size(512) == "512 B"
    assert presentation.size(3 * 1024 * 1024) == "3.0 MiB"
    assert presentation.when(datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))) == \
        "2026-01-01 12:00:00 UTC"


# ---------------------------------------------------------------------------- dry-run

def view(**extra: list) -> dict:
    return {"models": [{"name": "fraud-x", "champion": 2}],
            "versions": [version_row(1, "none"), version_row(2, "production"), version_row(3, "staging"),
                         version_row(4, "none", "rejected")],
            "results": [evaluation(5, 2, {"auc": 0.95}), evaluation(8, 3, {"auc": 0.955, "latency_ms": 10}),
                        evaluation(9, 2, {"auc": 0.88}, suite="monitor", environment="production")],
            "changes": [change(1, 1, "staging", "production", 0), change(2, 1, "production", "none", 5, "superseded"),
                        change(3, 2, "staging", "production", 5), change(4, 3, "none", "staging", 6)],
            "rejected": [{"name": "fraud-x", "version": 4, "at": T0}], **extra}


def test_dry_run_compares_what_two_policies_would_do_now() -> None:
    looser = parse_policy(POLICY_TEXT_LOOSER)
    now = T0 + timedelta(hours=1)
    current = dryrun.decide(view(), POLICY, now)
    assert current[("fraud-x", 3)].action == "hold"           # 0.955 does not beat 0.95 by 0.01
    assert current[("fraud-x", 2)].action == "keep"           # 0.88 holds the rollback threshold 0.85
    assert current[("fraud-x", 4)].action == "keep"           # rejected a day ago? no: an hour
    differences = {(d.name, d.version): d for d in dryrun.compare(view(), POLICY, looser, now)}
    assert differences[("fraud-x", 3)].new.action == "promote"
    assert differences[("fraud-x", 2)].new.action == "rollback" and "0.88" in differences[("fraud-x", 2)].new.detail
    assert differences[("fraud-x", 4)].new.action == "archive" and "rejected" in differences[("fraud-x", 4)].new.detail
    assert ("fraud-x", 1) not in differences                   # kept either way (keep_restorable 1)
    assert json.dumps(differences[("fraud-x", 3)].as_dict())
    assert dryrun.compare(view(), POLICY, POLICY, now) == []
    assert len(dryrun.compare(view(), POLICY, POLICY, now, everything=True)) == 4


POLICY_TEXT_LOOSER = """
rules:
  - match: "fraud-*"
    required_suites: [offline-eval]
    thresholds: {auc: ">= 0.90"}
    champion: {metric: auc, direction: higher, min_improvement: 0.001}
    rollback: {auc: ">= 0.90"}
    retention: {keep_restorable: 1, rejected_grace: 30m, staging_max_age: 30d}
"""
