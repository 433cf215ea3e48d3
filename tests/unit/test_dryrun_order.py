"""`policy dry-run` lists what changes first; versions either policy treats alike come only
with `--all`, after the changes."""

from __future__ import annotations

from datetime import timedelta

from services.api import dryrun
from shared.policy import parse_policy
from tests.unit.test_api_parts import POLICY, POLICY_TEXT_LOOSER, T0, view


def test_changes_come_first_and_unchanged_versions_only_with_all() -> None:
    looser, now = parse_policy(POLICY_TEXT_LOOSER), T0 + timedelta(hours=1)
    changes = dryrun.compare(view(), POLICY, looser, now)
    assert [(d.version, d.changed) for d in changes] == [(2, True), (3, True), (4, True)]
    everything = dryrun.compare(view(), POLICY, looser, now, everything=True)
    assert [(d.version, d.changed) for d in everything] == [(2, True), (3, True), (4, True), (1, False)]
    assert everything[-1].as_dict()["changed"] is False and everything[0].as_dict()["changed"] is True
    same = dryrun.compare(view(), POLICY, POLICY, now, everything=True)
    assert [d.changed for d in same] == [False] * 4 and dryrun.compare(view(), POLICY, POLICY, now) == []
