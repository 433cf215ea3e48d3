"""The production endpoint's pure parts: ETags, conditional requests, and which version was in
production at a given moment."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def etag(name: str, champion: int, champion_seq: int) -> str:
    """A strong validator for "model `name` has champion `champion`, crowned at audit seq
    `champion_seq`": it changes whenever the champion does, even back to an earlier version."""
    digest = hashlib.sha256(f"{name}\0{champion}\0{champion_seq}".encode()).hexdigest()[:32]
    return f'"{digest}"'


def not_modified(if_none_match: str | None, current: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison against any listed tag, or `*`."""
    if not if_none_match:
        return False
    opaque = current.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False


class TimeError(ValueError):
    pass


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with its offset, as an aware UTC datetime; else `TimeError`."""
    found = _RFC3339.match(text.strip()) if len(text) <= 64 else None
    if found is None:
        raise TimeError(f"{text[:64]!r} is not an RFC 3339 date-time such as 2025-01-31T12:00:00Z")
    year, month, day, hour, minute, second = (int(found[i]) for i in range(1, 7))
    fraction, offset = found[7] or "", found[8]
    second = min(second, 59)  # a leap second names the last second of its minute
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    try:
        if offset in ("Z", "z"):
            zone: Any = UTC
        else:
            from datetime import timedelta, timezone

            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            delta = timedelta(hours=hours, minutes=minutes)
            zone = timezone(delta if offset[0] == "+" else -delta)
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):
        raise TimeError(f"{text[:64]!r} is not a valid date-time (out of range)") from None


@dataclass(frozen=True)
class Reign:
    """A version's time in production: from `since` (inclusive) until `until` (exclusive, None: now)."""

    version: int
    since: datetime
    since_seq: int
    until: datetime | None = None


def reigns(changes: Iterable[Mapping[str, Any]]) -> list[Reign]:
    """Fold stage changes (seq, version, from_stage, to_stage, at) in seq order into the
    periods each version was in production."""
    done: list[Reign] = []
    current: Reign | None = None
    for change in sorted(changes, key=lambda c: c["seq"]):
        if change["to_stage"] == "production":
            if current is not None and current.version != change["version"]:
                done.append(Reign(current.version, current.since, current.since_seq, change["at"]))
            if current is None or current.version != change["version"]:
                current = Reign(change["version"], change["at"], change["seq"])
        elif current is not None and change["version"] == current.version:
            done.append(Reign(current.version, current.since, current.since_seq, change["at"]))
            current = None
    if current is not None:
        done.append(current)
    return done


def production_at(changes: Iterable[Mapping[str, Any]], at: datetime) -> Reign | None:
    """The version in production at `at`, judged by the stage changes recorded up to then."""
    known = [c for c in changes if c["at"] <= at]
    found = reigns(known)
    if found and found[-1].until is None:
        return found[-1]
    return None
