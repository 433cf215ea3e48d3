"""The audit log's hash chain: canonical bytes of a record, a link, and verification. Pure.

Each row stores `hash = sha256(prev_hash || canonical(row))`, where `prev_hash` is the hash of
the row before it in `seq` order (`GENESIS` for the first). The chain head (last seq, last
hash, row count) is kept beside the log, so that removing the newest rows shows too.

The canonical form is JSON with sorted keys and no whitespace over exactly `FIELDS`: uuids as
strings, timestamps as RFC 3339 UTC with microseconds, numbers by value (so `2`, `2.0` and
what PostgreSQL's jsonb gives back for them hash alike), strings as UTF-8. It must give the
same bytes for a record built from an event and for the same record read back from the
database, and different bytes for any change of any field.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any

import orjson

GENESIS = "0" * 64

# The content a row's hash covers, in no particular order (the canonical form sorts them).
FIELDS: tuple[str, ...] = (
    "event_id", "action", "name", "version", "from_stage", "to_stage", "actor", "reason",
    "evidence", "correlation_id", "causation_id", "source", "occurred_at",
)

ALTERED = "altered (hash does not match content)"
PREDECESSOR_MISSING = "predecessor missing (row deleted?)"
TRUNCATED = "rows deleted at the end"
BEYOND_HEAD = "rows beyond the chain head"
COUNT_MISMATCH = "row count differs from the chain head"


@dataclass(frozen=True)
class AuditRecord:
    """What one audit row says; built from a `registry.audit` event or read from the log."""

    event_id: uuid.UUID
    action: str
    name: str
    actor: str
    source: str
    occurred_at: datetime
    version: int | None = None
    from_stage: str | None = None
    to_stage: str | None = None
    reason: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None

    @classmethod
    def from_event(cls, event: Any) -> AuditRecord:
        """From a parsed `RegistryAudit` CloudEvent."""
        data = event.data
        return cls(event_id=event.id, action=data.action, name=data.name, version=data.version,
                   from_stage=data.from_stage, to_stage=data.to_stage, actor=data.actor,
                   reason=data.reason, evidence=dict(data.evidence),
                   correlation_id=event.correlationid, causation_id=event.causationid,
                   source=event.source, occurred_at=event.time)


@dataclass(frozen=True)
class ChainRow:
    """One stored row: its position and hashes beside its content."""

    seq: int
    prev_hash: str
    hash: str
    record: AuditRecord

    @property
    def event_id(self) -> uuid.UUID:
        return self.record.event_id


@dataclass(frozen=True)
class ChainHead:
    last_seq: int = 0
    last_hash: str = GENESIS
    row_count: int = 0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the chain, naming the row it was found at."""

    seq: int | None
    event_id: uuid.UUID | None
    kind: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "the log"
        if self.event_id is not None:
            where += f" (event {self.event_id})"
        return f"{where}: {self.kind}" + (f": {self.detail}" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "event_id": str(self.event_id) if self.event_id else None,
                "kind": self.kind, "detail": self.detail}


# ---------------------------------------------------------------------------- canonical form


def canonical(record: AuditRecord | Mapping[str, Any]) -> bytes:
    """The bytes a row's hash covers; `record` is an `AuditRecord` or a mapping with `FIELDS`."""
    if isinstance(record, AuditRecord):
        content = {name: getattr(record, name) for name in FIELDS}
    else:
        content = {name: record[name] for name in FIELDS}
    content["event_id"] = _uuid(content["event_id"], "event_id", required=True)
    content["correlation_id"] = _uuid(content["correlation_id"], "correlation_id")
    content["causation_id"] = _uuid(content["causation_id"], "causation_id")
    content["occurred_at"] = timestamp(content["occurred_at"])
    prepared = _prepared(content)
    try:
        return orjson.dumps(prepared, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # text that is not UTF-8 (a lone surrogate)
        raise ValueError(f"cannot put this text in the audit chain: {exc}") from None


def link(prev_hash: str, record: AuditRecord | Mapping[str, Any]) -> str:
    """The hash of a row that follows a row hashed `prev_hash`."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(record)).hexdigest()


def chain(records: Sequence[AuditRecord], head: ChainHead = ChainHead(),
          seqs: Sequence[int] | None = None) -> tuple[list[ChainRow], ChainHead]:
    """Link `records` after `head`, in order; `seqs` (ascending) default to the head's next ones."""
    if seqs is None:
        seqs = range(head.last_seq + 1, head.last_seq + 1 + len(records))
    if len(seqs) != len(records):
        raise ValueError("one seq per record")
    prev, last_seq, rows = head.last_hash, head.last_seq, []
    for seq, record in zip(seqs, records, strict=True):
        if seq <= last_seq:
            raise ValueError(f"seq {seq} does not follow seq {last_seq}")
        digest = link(prev, record)
        rows.append(ChainRow(seq, prev, digest, record))
        prev, last_seq = digest, seq
    if not rows:
        return rows, head
    return rows, ChainHead(rows[-1].seq, rows[-1].hash, head.row_count + len(rows))


def timestamp(value: datetime) -> str:
    if not isinstance(value, datetime):
        raise TypeError(f"occurred_at must be a datetime, not {type(value).__name__}")
    offset = value.utcoffset() if value.tzinfo is not None else None
    if offset is None:
        raise ValueError("occurred_at must carry a timezone")
    utc = value if not offset else value.astimezone(UTC)
    if utc.year < 1000:  # strftime leaves such a year unpadded; isoformat pads it
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return datetime.isoformat(utc, timespec="microseconds")[:-6] + "Z"  # "+00:00" off: about 3x faster


def _uuid(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _prepared(value: Any) -> Any:
    """`value` as orjson writes the canonical form of it: every number already written by
    value (`_number`, an orjson Fragment), anything JSON has no place for refused. orjson
    writes the rest as the canonical form wants it: keys sorted, no whitespace, strings as
    UTF-8 with only `"`, `\\` and control characters escaped (what `json.dumps(...,
    ensure_ascii=False)` writes, byte for byte).

    Each test names the exact types evidence holds before the `isinstance` that catches the
    rest: every audit record is hashed as it is written and again by every verify and replay,
    and an `isinstance` against an abstract class costs more than the rest of the test."""
    kind = type(value)
    if kind is str or value is None or kind is bool or isinstance(value, str):
        return value
    if kind is int or kind is float or isinstance(value, (int, float, Decimal)):
        return orjson.Fragment(_number(value))
    if kind is dict or isinstance(value, Mapping):
        return {key: _prepared(item) if isinstance(key, str) else _key_refused(key) for key, item in value.items()}
    if kind is list or isinstance(value, (list, tuple)):
        return [_prepared(item) for item in value]
    raise TypeError(f"cannot put a {type(value).__name__} in the audit chain")


def _key_refused(key: object) -> Any:
    raise TypeError(f"object keys must be strings, not {type(key).__name__}")


_EXACT_INT = 10**28  # below it, the precision `_number` normalises with keeps every digit


def _number(value: int | float | Decimal) -> str:
    """A number by its value: 2, 2.0 and 2E+0 alike; a float by its shortest repr.

    PostgreSQL's jsonb keeps numbers as decimals and prints them without exponents, so a
    float may come back as an int (1e16) or with another spelling; the value is what counts.
    """
    if type(value) is int and value % 10 and -_EXACT_INT < value < _EXACT_INT:
        return str(value)  # what normalising it gives: no trailing zero to drop, no rounding
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers in the audit chain must be finite")
        text = repr(value)
        whole, point, fraction = text.partition(".")
        fraction = fraction.rstrip("0")
        if type(value) is float and point and fraction and "e" not in fraction:
            # What normalising gives for a repr without exponent (so at least 1e-4): only
            # the fraction's trailing zeros go, and the exponent stays within plain notation.
            return f"{whole}.{fraction}"
        number = Decimal(text)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("numbers in the audit chain must be finite")
        number = value
    else:
        number = Decimal(value)
    if number.is_zero():
        return "0"
    # Enough precision that normalising only drops trailing zeros, never rounds.
    return str(number.normalize(Context(prec=max(28, len(number.as_tuple().digits)))))


# ---------------------------------------------------------------------------- verification


class Verifier:
    """Walks the rows in seq order one at a time (so a cursor can feed it), then the head."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.count = 0
        self._last: ChainRow | None = None

    def feed(self, row: ChainRow) -> None:
        expected_prev = self._last.hash if self._last is not None else GENESIS
        if row.prev_hash != expected_prev:
            detail = (f"its prev_hash is not the hash of seq {self._last.seq}" if self._last is not None
                      else "the first row does not start from the genesis hash")
            self.problems.append(Problem(row.seq, row.event_id, PREDECESSOR_MISSING, detail))
        try:
            intact = link(row.prev_hash, row.record) == row.hash
        except (TypeError, ValueError) as exc:
            intact, why = False, f"content cannot be hashed: {exc}"
        else:
            why = "the stored hash does not match the row's content"
        if not intact:
            self.problems.append(Problem(row.seq, row.event_id, ALTERED, why))
        self._last = row
        self.count += 1

    def finish(self, head: ChainHead) -> list[Problem]:
        last = self._last
        if last is None:
            if head.row_count or head.last_seq:
                self.problems.append(Problem(None, None, TRUNCATED,
                                             f"the log is empty but the chain head is seq "
                                             f"{head.last_seq} ({head.row_count} records)"))
            return self.problems
        if last.seq < head.last_seq:
            self.problems.append(Problem(
                last.seq, last.event_id, TRUNCATED,
                f"the log ends at this row but the chain head is seq {head.last_seq} "
                f"({head.row_count} records, {self.count} found)"))
        elif last.seq > head.last_seq:
            self.problems.append(Problem(
                last.seq, last.event_id, BEYOND_HEAD,
                f"the chain head is seq {head.last_seq}: rows were added outside the audit writer"))
        elif last.hash != head.last_hash:
            self.problems.append(Problem(last.seq, last.event_id, ALTERED,
                                         "its hash differs from the one the chain head recorded"))
        elif self.count != head.row_count and not self.problems:
            self.problems.append(Problem(
                None, None, COUNT_MISMATCH,
                f"{self.count} rows found, the chain head recorded {head.row_count}"))
        return self.problems


def verify(rows: Iterable[ChainRow], head: ChainHead) -> list[Problem]:
    """Every problem with `rows` (in seq order) and `head`; an empty list: the chain is intact."""
    verifier = Verifier()
    for row in rows:
        verifier.feed(row)
    return verifier.finish(head)
