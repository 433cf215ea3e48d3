"""Retention: which superseded, rejected and stale staging versions archival archives, and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.archival.logic import decide_restore
from shared.domain.retention import Kept, ToArchive, due_by_time, superseded_beyond_keep
from shared.policy import Retention, parse_policy

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def superseded(version: int, days_ago: float, stage: str = "none") -> Kept:
    return Kept(version=version, stage=stage, superseded_at=NOW - timedelta(days=days_ago))


def archived_versions(found: list[ToArchive]) -> list[int]:
    return [a.version for a in found]


# ---------------------------------------------------------------------------- superseded


# Superseded newest first: v5 (1 day ago), v2 (2 days), v4 (3 days), v1 (4 days): the order of
# supersession, not of version numbers, decides which are kept.
WAITING = [superseded(4, 3), superseded(1, 4), superseded(5, 1), superseded(2, 2)]


@pytest.mark.parametrize("keep,archived", [
    (0, [5, 2, 4, 1]),
    (1, [2, 4, 1]),
    (2, [4, 1]),
    (3, [1]),
    (4, []),
    (10, []),
])
def test_the_oldest_superseded_beyond_keep_restorable_are_archived(keep: int, archived: list[int]) -> None:
    found = superseded_beyond_keep(WAITING, Retention(keep_restorable=keep))
    assert archived_versions(found) == archived
    assert all(a == ToArchive(a.version, "superseded", True) for a in found)


def test_only_versions_back_in_stage_none_count_as_superseded() -> None:
    versions = [superseded(1, 5), superseded(2, 4, stage="production"), superseded(3, 3, stage="staging"),
                superseded(4, 2, stage="archived"), superseded(5, 1)]
    # Of the stage-none ones, v5 is newest and kept; v1 goes. The others are never candidates.
    assert archived_versions(superseded_beyond_keep(versions, Retention(keep_restorable=1))) == [1]
    assert archived_versions(superseded_beyond_keep(versions, Retention(keep_restorable=0))) == [5, 1]


def test_versions_never_superseded_are_not_counted() -> None:
    versions = [Kept(1, "none"), Kept(2, "none", staged_at=NOW - DAY), superseded(3, 1), superseded(4, 2)]
    assert archived_versions(superseded_beyond_keep(versions, Retention(keep_restorable=1))) == [4]
    assert archived_versions(superseded_beyond_keep(versions, Retention(keep_restorable=2))) == []


def test_supersessions_at_the_same_moment_keep_the_higher_version() -> None:
    same = NOW - DAY
    versions = [Kept(7, "none", superseded_at=same), Kept(9, "none", superseded_at=same),
                Kept(8, "none", superseded_at=same)]
    assert archived_versions(superseded_beyond_keep(versions, Retention(keep_restorable=1))) == [8, 7]


def test_nothing_superseded_means_nothing_to_archive() -> None:
    assert superseded_beyond_keep([], Retention(keep_restorable=0)) == []


def test_keep_restorable_from_a_policy_file() -> None:
    rule = parse_policy('rules:\n  - match: "*"\n    retention: {keep_restorable: 1}\n').rules[0]
    assert archived_versions(superseded_beyond_keep(WAITING, rule.retention)) == [2, 4, 1]


# ---------------------------------------------------------------------------- rejected grace


GRACE = Retention(rejected_grace=timedelta(days=7), staging_max_age=None)


@pytest.mark.parametrize("age,due", [
    (timedelta(0), False),
    (timedelta(days=7) - timedelta(seconds=1), False),
    (timedelta(days=7), True),  # exactly at the grace period is due
    (timedelta(days=7, seconds=1), True),
    (timedelta(days=365), True),
])
def test_a_rejected_version_is_archived_once_its_grace_period_is_over(age: timedelta, due: bool) -> None:
    found = due_by_time([Kept(3, "none", rejected_at=NOW - age)], GRACE, NOW)
    assert found == ([ToArchive(3, "rejected", False)] if due else [])


def test_a_rejected_version_is_archived_not_restorable() -> None:
    (archive,) = due_by_time([Kept(3, "none", rejected_at=NOW - 30 * DAY)], GRACE, NOW)
    assert archive.restorable is False


def test_a_zero_grace_archives_a_rejected_version_at_once() -> None:
    retention = Retention(rejected_grace=timedelta(0), staging_max_age=None)
    assert archived_versions(due_by_time([Kept(3, "none", rejected_at=NOW)], retention, NOW)) == [3]


# ---------------------------------------------------------------------------- staging max age


MAX_AGE = Retention(rejected_grace=timedelta(days=7), staging_max_age=timedelta(days=30))


@pytest.mark.parametrize("age,due", [
    (timedelta(0), False),
    (timedelta(days=30) - timedelta(microseconds=1), False),
    (timedelta(days=30), True),  # exactly at the max age is due
    (timedelta(days=31), True),
])
def test_a_staging_version_older_than_the_max_age_expires(age: timedelta, due: bool) -> None:
    found = due_by_time([Kept(4, "staging", staged_at=NOW - age)], MAX_AGE, NOW)
    assert found == ([ToArchive(4, "expired", True)] if due else [])


def test_a_staging_max_age_of_none_never_expires() -> None:
    retention = Retention(staging_max_age=None)
    assert due_by_time([Kept(4, "staging", staged_at=NOW - 10_000 * DAY)], retention, NOW) == []


def test_staging_max_age_null_in_a_policy_file_never_expires() -> None:
    rule = parse_policy('rules:\n  - match: "*"\n    retention: {staging_max_age: null}\n').rules[0]
    assert rule.retention.staging_max_age is None
    assert due_by_time([Kept(4, "staging", staged_at=NOW - 10_000 * DAY)], rule.retention, NOW) == []


@pytest.mark.parametrize("stage", ["none", "production", "archived"])
def test_only_staging_versions_expire(stage: str) -> None:
    assert due_by_time([Kept(4, stage, staged_at=NOW - 100 * DAY)], MAX_AGE, NOW) == []


def test_a_staging_version_without_a_staged_time_does_not_expire() -> None:
    assert due_by_time([Kept(4, "staging")], MAX_AGE, NOW) == []


def test_due_by_time_sorts_each_version_into_its_reason() -> None:
    versions = [
        Kept(1, "none", rejected_at=NOW - 8 * DAY),    # rejected, past grace
        Kept(2, "none", rejected_at=NOW - 1 * DAY),    # rejected, within grace
        Kept(3, "staging", staged_at=NOW - 31 * DAY),  # stale in staging
        Kept(4, "staging", staged_at=NOW - 1 * DAY),   # fresh in staging
        Kept(5, "production", staged_at=NOW - 90 * DAY),
        superseded(6, 100),                            # superseded is not a time rule
    ]
    assert due_by_time(versions, MAX_AGE, NOW) == [ToArchive(1, "rejected", False), ToArchive(3, "expired", True)]


def test_nothing_is_due_in_an_empty_registry() -> None:
    assert due_by_time([], MAX_AGE, NOW) == []


# ---------------------------------------------------------------------------- restore

APPROVERS = parse_policy("rules:\n  - match: '*'\n    approvers: [alice, bob]\n").rule_for("m")
COLD = "s3://artifacts/archive/m/sha256/ab.bin"


def test_an_approver_restores_a_version_kept_in_cold_storage() -> None:
    decision = decide_restore(APPROVERS, actor="alice", archive_uri=COLD, rejected=False)
    assert decision.restore and "alice" in decision.detail


@pytest.mark.parametrize(("actor", "archive_uri", "rejected", "why"), [
    ("mallory", COLD, False, "not an approver"),
    ("alice", COLD, True, "rejected"),
    ("alice", None, False, "without an artifact"),
    ("mallory", None, True, "not an approver"),  # who asks is checked first
])
def test_a_restore_is_refused_with_its_reason(actor: str, archive_uri: str | None, rejected: bool,
                                              why: str) -> None:
    decision = decide_restore(APPROVERS, actor=actor, archive_uri=archive_uri, rejected=rejected)
    assert not decision.restore and why in decision.detail
