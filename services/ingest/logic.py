"""ingest's decisions, as plain functions over plain data."""

from __future__ import annotations

from enum import Enum


class VersionClaim(Enum):
    NEW = "new"              # the version is free: record it
    DUPLICATE = "duplicate"  # the same artifact again: nothing changes, nothing is emitted
    CONFLICT = "conflict"    # taken by a different artifact: reject


def claim_version(existing_sha256: str | None, sha256: str) -> VersionClaim:
    """An explicitly numbered version must be new, or identical to the one recorded."""
    if existing_sha256 is None:
        return VersionClaim.NEW
    return VersionClaim.DUPLICATE if existing_sha256 == sha256 else VersionClaim.CONFLICT
