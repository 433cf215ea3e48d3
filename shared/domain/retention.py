"""Retention decisions: which versions to archive, and why, from plain facts and a clock.

Archival acts on them; the API's policy dry-run previews them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.policy import Retention


@dataclass(frozen=True)
class Kept:
    """A version archival has not archived yet, as retention sees it."""

    version: int
    stage: str
    staged_at: datetime | None = None
    superseded_at: datetime | None = None
    rejected_at: datetime | None = None


@dataclass(frozen=True)
class ToArchive:
    version: int
    reason: str  # superseded, rejected, expired
    restorable: bool


def superseded_beyond_keep(versions: Iterable[Kept], retention: Retention) -> list[ToArchive]:
    """Superseded champions wait as rollback targets; beyond `keep_restorable`, the oldest go."""
    waiting = sorted((v for v in versions if v.superseded_at is not None and v.stage == "none"),
                     key=lambda v: (v.superseded_at, v.version), reverse=True)
    return [ToArchive(v.version, "superseded", True) for v in waiting[retention.keep_restorable:]]


def due_by_time(versions: Sequence[Kept], retention: Retention, now: datetime) -> list[ToArchive]:
    """Rejected versions after their grace period; staging versions older than the max age."""
    due = []
    for v in versions:
        if v.rejected_at is not None and now - v.rejected_at >= retention.rejected_grace:
            due.append(ToArchive(v.version, "rejected", False))
        elif (v.stage == "staging" and v.staged_at is not None and retention.staging_max_age is not None
              and now - v.staged_at >= retention.staging_max_age):
            due.append(ToArchive(v.version, "expired", True))
    return due
