"""Why a version is (or is not) promoted: the policy's gates, judged by the same model promotion
decides with (`RegisteredModel.judge`) over the read model, and shaped for people.

Pure: rows in (as the queries return them), documents out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.domain.promotion import Gate, Result, independent_results, latest_per_suite
from shared.domain.registered_model import RegisteredModel, Version
from shared.policy import Rule, Threshold

Row = Mapping[str, Any]


def results_of(evaluations: Iterable[Row]) -> list[Result]:
    """view_evaluations rows as the decisions see them: seq orders them, newest highest."""
    return [Result(e["suite"], e["environment"], dict(e["metrics"] or {}), e["passed"], e["seq"], e.get("evaluator"))
            for e in evaluations]


def blocked_of(version: Row, changes: Iterable[Row]) -> str | None:
    """Why promotion would never move this version again, as far as the view shows."""
    if version["status"] in ("rejected", "quarantined"):
        return str(version["status"])
    for change in changes:
        if (change["version"] == version["version"] and change["from_stage"] == "production"
                and change["reason"] == "rollback"):
            return "rolled_back"
    return None


def champion_metric(rule: Rule, registration_metrics: Iterable[str] = ()) -> str | None:
    """The metric the UI charts: the champion rule's, else the first threshold's, else any."""
    if rule.champion is not None:
        return rule.champion.metric
    if rule.thresholds:
        return rule.thresholds[0].metric
    return next(iter(sorted(registration_metrics)), None)


def key_metric_names(rule: Rule) -> list[str]:
    names = [rule.champion.metric] if rule.champion else []
    names += [t.metric for t in rule.thresholds]
    return list(dict.fromkeys(names))


def latest_value(evaluations: Iterable[Row], metric: str) -> tuple[float, Row] | None:
    """The newest pre-production result reporting `metric` (what promotion compares)."""
    found = [e for e in evaluations if e["environment"] != "production" and metric in (e["metrics"] or {})]
    if not found:
        return None
    newest = max(found, key=lambda e: e["seq"])
    return float(newest["metrics"][metric]), newest


def key_metrics(rule: Rule, version: Row, evaluations: Sequence[Row]) -> dict[str, float]:
    """Per version: each metric the policy judges, from its newest QA result, else from
    what the pipeline reported at registration; all registration metrics when the policy names none."""
    names = key_metric_names(rule) or sorted(version.get("metrics") or {})
    shown = {}
    for metric in names:
        found = latest_value(evaluations, metric)
        if found is not None:
            shown[metric] = found[0]
        elif metric in (version.get("metrics") or {}):
            shown[metric] = float(version["metrics"][metric])
    return shown


def _result_doc(row: Row | None, metric: str | None = None) -> dict[str, Any] | None:
    if row is None:
        return None
    doc = {"seq": row["seq"], "suite": row["suite"], "environment": row["environment"], "at": row["at"],
           "passed": row["passed"], "evaluator": row.get("evaluator")}
    if metric is not None:
        doc["metric"] = metric
        doc["value"] = (row["metrics"] or {}).get(metric)
    return doc


def _threshold(rule: Rule, key: str) -> Threshold | None:
    return next((t for t in rule.thresholds if t.key == key), None)


def shape_gate(gate: Gate, rule: Rule, evaluations: Sequence[Row], champion_version: int | None,
               champion_evaluations: Sequence[Row]) -> dict[str, Any]:
    """One gate for people: what it checks, whether it holds, and the results it was judged on."""
    kind, _, subject = gate.gate.partition(":")
    by_seq = {e["seq"]: e for e in evaluations}
    latest = latest_per_suite(results_of(evaluations))
    doc: dict[str, Any] = {"gate": gate.gate, "kind": kind, "passed": gate.passed, "detail": gate.detail,
                           "metric": None, "threshold": None, "suite": None, "results": [], "champion": None}
    if kind == "suite":
        doc["suite"] = subject
        result = latest.get(subject)
        doc["results"] = [d for d in [_result_doc(by_seq.get(result.seq) if result else None)] if d]
    elif kind == "threshold":
        threshold = _threshold(rule, subject)
        if threshold is not None:
            doc.update(metric=threshold.metric, threshold=str(threshold), suite=threshold.suite)
            suites = [threshold.suite] if threshold.suite else sorted(latest)
            for suite in suites:
                result = latest.get(suite)
                if result is not None and threshold.metric in result.metrics:
                    doc["results"].append(_result_doc(by_seq[result.seq], threshold.metric))
    elif kind == "champion" and rule.champion is not None:
        metric = rule.champion.metric
        doc["metric"] = metric
        sign = ">=" if rule.champion.direction == "higher" else "<="
        doc["threshold"] = f"{sign} champion {'+' if sign == '>=' else '-'} {rule.champion.min_improvement:g}"
        candidate = latest_value(evaluations, metric)
        if candidate is not None:
            doc["results"].append(_result_doc(candidate[1], metric))
        if champion_version is not None:
            incumbent = latest_value(champion_evaluations, metric)
            doc["champion"] = {"version": champion_version,
                               "value": incumbent[0] if incumbent else None,
                               "result": _result_doc(incumbent[1], metric) if incumbent else None}
    return doc


def explain(rule: Rule, *, revision: str, version: Row, evaluations: Sequence[Row], changes: Sequence[Row],
            champion_version: int | None, champion_evaluations: Sequence[Row]) -> dict[str, Any]:
    """Every promotion gate for `version`, computed as promotion computes it.

    The current champion is the version to beat; the champion itself is judged against no one
    (it has nobody to beat), exactly as when it was promoted with no champion in place.
    """
    author = version.get("registered_by")
    blocked = blocked_of(version, changes)
    rival = champion_version if champion_version not in (None, version["version"]) else None
    model = RegisteredModel(version["name"], rule, revision, [
        Version(version["version"], version["stage"], blocked=blocked, registered_by=author,
                results=results_of(evaluations)),
        *([Version(rival, "production", results=results_of(champion_evaluations))] if rival is not None else [])])
    decision = model.judge(version["version"])
    gates = decision.gates
    counted = {r.seq for r in independent_results(rule, results_of(evaluations), author)[0]}
    evaluations = [e for e in evaluations if e["seq"] in counted]  # shown as promotion judges them
    shaped = [shape_gate(g, rule, evaluations, rival, champion_evaluations if rival else ()) for g in gates]
    failing = [g for g in shaped if not g["passed"]]
    if version["stage"] == "production":
        summary = "in production"
    elif decision.promote:
        summary = "every gate holds: promotion moves it to production on its next result"
    elif blocked is not None:
        summary = f"{blocked.replace('_', ' ')}: never promoted by policy"
    elif version["stage"] != "staging":
        summary = f"in stage {version['stage']}: only staging versions are promoted by policy"
    elif failing:
        summary = f"held: {len(failing)} of {len(shaped)} gates fail"
    else:
        summary = "held"
    return {"name": version["name"], "version": version["version"], "stage": version["stage"],
            "status": version["status"], "blocked": blocked, "would_promote": decision.promote,
            "all_gates_pass": all(g.passed for g in gates), "summary": summary, "policy_revision": revision,
            "rule": rule.to_dict(), "champion_version": champion_version, "gates": shaped}
