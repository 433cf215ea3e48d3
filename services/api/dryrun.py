"""`modelreg policy dry-run`: what each policy would decide now over the current registry view.

Pure: the view (as `queries.whole_view` returns it), a policy and a clock in; decisions out.
The same decision functions the services run are used: promotion's gates and rollback
thresholds, archival's retention rules.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.promotion import Result
from shared.domain.registered_model import RegisteredModel, Version
from shared.domain.retention import Kept, due_by_time, superseded_beyond_keep
from shared.policy import Policy

from .explain import blocked_of, results_of

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Verdict:
    """What a policy does with one version now: promote, roll back, archive, or nothing."""

    action: str  # "promote", "rollback", "archive", "hold", "keep"
    detail: str

    @property
    def changes_state(self) -> bool:
        return self.action in ("promote", "rollback", "archive")


@dataclass(frozen=True)
class Difference:
    name: str
    version: int
    stage: str
    current: Verdict
    new: Verdict

    @property
    def changed(self) -> bool:
        return (self.current.action, self.current.detail) != (self.new.action, self.new.detail)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "stage": self.stage, "changed": self.changed,
                "current": {"action": self.current.action, "detail": self.current.detail},
                "new": {"action": self.new.action, "detail": self.new.detail}}


def _group(rows: Sequence[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row["name"]].append(row)
    return grouped


def _kept(version: Row, changes: Sequence[Row], rejected_at: datetime | None) -> Kept:
    mine = [c for c in changes if c["version"] == version["version"]]
    staged = [c["at"] for c in mine if c["to_stage"] == "staging"]
    last = mine[-1] if mine else None
    superseded = (last["at"] if last is not None and last["reason"] == "superseded"
                  and last["to_stage"] == "none" else None)
    return Kept(version["version"], version["stage"], staged[-1] if staged else None, superseded, rejected_at)


def decide(view: Mapping[str, Sequence[Row]], policy: Policy, now: datetime) -> dict[tuple[str, int], Verdict]:
    """Every live version's verdict under `policy`."""
    versions, results, changes = _group(view["versions"]), _group(view["results"]), _group(view["changes"])
    rejected = {(r["name"], r["version"]): r["at"] for r in view["rejected"]}
    verdicts: dict[tuple[str, int], Verdict] = {}
    for model in view["models"]:
        name = model["name"]
        rule = policy.rule_for(name)
        mine = versions.get(name, [])
        evaluations = results.get(name, [])
        moves = changes.get(name, [])
        by_version: dict[int, list[Row]] = defaultdict(list)
        for e in evaluations:
            by_version[e["version"]].append(e)
        # The model as promotion would see it now: each version with its results and blocks.
        judged = RegisteredModel(name, rule, policy.revision, [
            Version(v["version"], v["stage"], blocked=blocked_of(v, moves), registered_by=v.get("registered_by"),
                    results=results_of(by_version.get(v["version"], []))) for v in mine])
        live = [v for v in mine if v["stage"] != "archived"]
        kept = [_kept(v, moves, rejected.get((name, v["version"]))) for v in live]
        archive = {a.version: a for a in superseded_beyond_keep(kept, rule.retention)}
        archive.update({a.version: a for a in due_by_time(kept, rule.retention, now)})
        for version in live:
            number = version["version"]
            key = (name, number)
            if number in archive:
                verdicts[key] = Verdict("archive", f"{archive[number].reason} (retention of rule "
                                                   f"{rule.match!r})")
                continue
            if version["stage"] == "staging":
                decision = judged.judge(number)
                if decision.promote:
                    verdicts[key] = Verdict("promote", "every gate holds: staging -> production")
                else:
                    verdicts[key] = Verdict("hold", "; ".join(g.detail for g in decision.failing) or "held")
            elif version["stage"] == "production":
                verdicts[key] = _rollback_verdict(judged, by_version.get(number, []))
            else:
                verdicts[key] = Verdict("keep", f"stays in {version['stage']}")
    return verdicts


def _rollback_verdict(model: RegisteredModel, evaluations: Sequence[Row]) -> Verdict:
    latest: dict[str, Result] = {}
    for result in results_of(e for e in evaluations if e["environment"] == "production"):
        if result.suite not in latest or result.seq > latest[result.suite].seq:
            latest[result.suite] = result
    broken = [g for result in latest.values() for g in model.rollback_gates(result)]
    if broken:
        return Verdict("rollback", "; ".join(g.detail for g in broken))
    return Verdict("keep", "the production results hold the rollback thresholds")


def compare(view: Mapping[str, Sequence[Row]], current: Policy, new: Policy, now: datetime,
            *, everything: bool = False) -> list[Difference]:
    """Versions whose verdict differs between the two policies; with `everything`, the
    unchanged ones too, after every change (changes are what a reader looks for)."""
    before, after = decide(view, current, now), decide(view, new, now)
    stages = {(v["name"], v["version"]): v["stage"] for v in view["versions"]}
    changed: list[Difference] = []
    unchanged: list[Difference] = []
    for key in sorted(set(before) | set(after)):
        old = before.get(key, Verdict("keep", "-"))
        fresh = after.get(key, Verdict("keep", "-"))
        difference = Difference(key[0], key[1], stages.get(key, "?"), old, fresh)
        (changed if difference.changed else unchanged).append(difference)
    return changed + unchanged if everything else changed
