"""Archival's own decisions (retention, shared with the API's dry-run, is
`shared.domain.retention`)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.policy import Rule


@dataclass(frozen=True)
class RestoreDecision:
    restore: bool
    detail: str


def decide_restore(rule: Rule, *, actor: str, archive_uri: str | None, rejected: bool) -> RestoreDecision:
    """An approver may bring an archived version back to stage `none`, its artifact from cold
    storage. A rejected one stays archived (validation refused it: it may never be used).
    Restoring certifies nothing: every move up from `none` is promotion's, with its separation
    of duties, so the version's own author may restore it."""
    if actor not in rule.approvers:
        return RestoreDecision(False, f"{actor} is not an approver for this model")
    if rejected:
        return RestoreDecision(False, "the version was rejected before it was archived; it cannot be restored")
    if archive_uri is None:
        return RestoreDecision(False, "the version was archived without an artifact to restore")
    return RestoreDecision(True, f"restored by {actor}")
