"""Signed checkpoints of the audit chain head: proof of the log that does not trust PostgreSQL. Pure.

The hash chain shows an edit only to someone who does not also rewrite every later hash and
the chain head; anyone with write access to the database can do both. So every N records or
T seconds the audit writer signs (sequence, head hash, record count, time) with its Ed25519
key, which is not in PostgreSQL, and stores the checkpoint write-once in S3 (`checkpoints/`)
and on `registry.audit`. `modelreg audit verify` then holds the table to every checkpoint: a
recomputed chain, a deleted row or a truncated tail disagrees with a signature nobody with
only database access can make.

The writer signs a head only when the rows since its previous checkpoint link on to it
(`SegmentCheck`), so it never blesses a chain someone rewrote behind its back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import rfc8785

from shared.keys import Keyring, SigningKey

from .chain import GENESIS, TRUNCATED, ChainHead, ChainRow, Problem, link, timestamp

PREFIX = "checkpoints/"
ACTION = "checkpoint"  # the registry.audit record that announces one
SERVICE = "audit"  # the only service whose key may sign checkpoints
PAYLOAD_TYPE = "modelreg.audit.checkpoint"

REWRITTEN = "rewritten (differs from a signed checkpoint)"
ROW_DELETED = "row deleted (named by a signed checkpoint)"
ROWS_MISSING = "rows deleted before a signed checkpoint"
FORGED_CHECKPOINT = "checkpoint not authentic"
HEAD_BEHIND = "chain head behind a signed checkpoint"


def signed_payload(seq: int, head_hash: str, records: int, time: datetime) -> bytes:
    """The bytes a checkpoint's signature covers (RFC 8785 JSON)."""
    return rfc8785.dumps({"type": PAYLOAD_TYPE, "seq": seq, "hash": head_hash, "records": records,
                          "time": timestamp(time)})


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    records: int
    time: datetime
    kid: str
    signature: str

    @property
    def key(self) -> str:
        """Its S3 key: zero-padded, so listing order is seq order."""
        return f"{PREFIX}{self.seq:020d}.json"

    def payload(self) -> bytes:
        return signed_payload(self.seq, self.hash, self.records, self.time)

    def as_dict(self) -> dict[str, object]:
        return {"type": PAYLOAD_TYPE, "seq": self.seq, "hash": self.hash, "records": self.records,
                "time": timestamp(self.time), "kid": self.kid, "signature": self.signature}

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, raw: object) -> Checkpoint:
        if not isinstance(raw, dict) or raw.get("type") != PAYLOAD_TYPE:
            raise ValueError("not a modelreg audit checkpoint")
        try:
            seq, records = raw["seq"], raw["records"]
            head_hash, kid, signature = raw["hash"], raw["kid"], raw["signature"]
            time = datetime.fromisoformat(str(raw["time"]).replace("Z", "+00:00"))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"a checkpoint field is missing or malformed: {exc}") from None
        if not (isinstance(seq, int) and isinstance(records, int) and seq >= 0 and records >= 0):
            raise ValueError("seq and records must be non-negative integers")
        if not all(isinstance(v, str) for v in (head_hash, kid, signature)) or time.tzinfo is None:
            raise ValueError("hash, kid, signature must be strings and time must carry a timezone")
        return cls(seq, head_hash, records, time, kid, signature)

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"a checkpoint is not JSON: {exc}") from None
        return cls.from_dict(raw)


def sign(key: SigningKey, head: ChainHead, now: datetime) -> Checkpoint:
    if key.service != SERVICE:
        raise ValueError(f"checkpoints are signed by the {SERVICE} writer's key, not {key.service}'s")
    return Checkpoint(head.last_seq, head.last_hash, head.row_count, now, key.key_id,
                      key.sign(signed_payload(head.last_seq, head.last_hash, head.row_count, now)))


def authenticity_problem(checkpoint: Checkpoint, keyring: Keyring) -> str | None:
    """Why `checkpoint` is not the audit writer's, or None."""
    service = keyring.service_of(checkpoint.kid)
    if service is None:
        return f"signed by unknown key {checkpoint.kid[:32]!r}"
    if service != SERVICE:
        return f"signed by {service}'s key; only the audit writer's may sign checkpoints"
    if not keyring.verify(checkpoint.kid, checkpoint.payload(), checkpoint.signature):
        return "the signature does not match its content"
    return None


def due(head: ChainHead, last: Checkpoint | None, *, since: datetime, now: datetime, fresh: bool,
        every_records: int, every_seconds: float) -> bool:
    """Whether to sign `head` now. `fresh`: records other than checkpoint announcements were
    appended since `last` (so announcing a checkpoint never makes another one due); `since`:
    when `last` was made, or when the writer started when there is none."""
    if not fresh or head.last_seq <= (last.seq if last else 0):
        return False
    if head.row_count - (last.records if last else 0) >= every_records:
        return True
    return now - since >= timedelta(seconds=every_seconds)


class SegmentCheck:
    """Do the rows after checkpoint `previous` (fed in seq order) link on from it to `head`?"""

    def __init__(self, previous: Checkpoint | None) -> None:
        self._hash = previous.hash if previous else GENESIS
        self._seq = previous.seq if previous else 0
        self._count = previous.records if previous else 0
        self.problem: str | None = None

    def feed(self, row: ChainRow) -> None:
        if self.problem is not None:
            return
        if row.prev_hash != self._hash:
            self.problem = f"seq {row.seq} does not link on from seq {self._seq}"
        elif link(row.prev_hash, row.record) != row.hash:
            self.problem = f"seq {row.seq}: the stored hash does not match the row's content"
        self._hash, self._seq, self._count = row.hash, row.seq, self._count + 1

    def finish(self, head: ChainHead) -> str | None:
        if self.problem is None and (self._seq, self._hash, self._count) != (
                head.last_seq, head.last_hash, head.row_count):
            self.problem = (f"the rows end at seq {self._seq} ({self._count} records) but the chain "
                            f"head says seq {head.last_seq} ({head.row_count} records)")
        return self.problem


class CheckpointAudit:
    """Holds the log (rows fed in seq order, as `chain.Verifier` reads them) to the signed
    checkpoints; only the earliest disagreeing checkpoint is named, with a count of the rest."""

    def __init__(self, checkpoints: Sequence[Checkpoint]) -> None:
        self.checkpoints = sorted(checkpoints, key=lambda c: c.seq)
        self._wanted = {c.seq for c in self.checkpoints}
        self._seen: dict[int, ChainRow] = {}  # checkpoint seq -> the row at it
        self._before: dict[int, int] = {}  # checkpoint seq -> rows with seq <= it
        self._pending = sorted(self._wanted, reverse=True)  # checkpoint seqs not passed yet
        self._count = 0
        self._last: ChainRow | None = None

    def feed(self, row: ChainRow) -> None:
        # Rows with seq <= each checkpoint's seq, counted as the walk passes it.
        while self._pending and self._pending[-1] < row.seq:
            self._before[self._pending.pop()] = self._count
        self._count += 1
        if row.seq in self._wanted:
            self._seen[row.seq] = row
            if self._pending and self._pending[-1] == row.seq:
                self._before[self._pending.pop()] = self._count
        self._last = row

    def finish(self, head: ChainHead) -> list[Problem]:
        while self._pending:
            self._before[self._pending.pop()] = self._count
        last_seq = self._last.seq if self._last else 0
        found: dict[str, list[Problem]] = {}

        def note(problem: Problem) -> None:
            found.setdefault(problem.kind, []).append(problem)

        for c in self.checkpoints:
            signed = f"the checkpoint signed {timestamp(c.time)}"
            if c.seq > last_seq:
                where = self._last
                note(Problem(where.seq if where else None, where.event_id if where else None, TRUNCATED,
                             f"{signed} covers seq {c.seq} ({c.records} records); the log ends at seq "
                             f"{last_seq} ({self._count} records)"))
                continue
            row = self._seen.get(c.seq)
            if row is None:
                note(Problem(c.seq, None, ROW_DELETED,
                             f"{signed} ends at this row (hash {c.hash[:16]}), which is not in the log"))
                continue
            if row.hash != c.hash:
                note(Problem(row.seq, row.event_id, REWRITTEN,
                             f"{signed} says the chain reached hash {c.hash[:16]} here; the log has "
                             f"{row.hash[:16]}: rows up to this one were changed and re-hashed"))
            elif self._before[c.seq] != c.records:
                note(Problem(row.seq, row.event_id, ROWS_MISSING,
                             f"{signed} counted {c.records} records up to here; the log has "
                             f"{self._before[c.seq]}"))
        if self.checkpoints and head.last_seq < self.checkpoints[-1].seq:
            newest = self.checkpoints[-1]
            note(Problem(None, None, HEAD_BEHIND,
                         f"the chain head is seq {head.last_seq}; the checkpoint signed "
                         f"{timestamp(newest.time)} covers seq {newest.seq}"))
        problems = []
        for kind_problems in found.values():
            first = kind_problems[0]
            if len(kind_problems) > 1:
                first = Problem(first.seq, first.event_id, first.kind,
                                f"{first.detail} ({len(kind_problems) - 1} later checkpoint(s) disagree too)")
            problems.append(first)
        return sorted(problems, key=lambda p: (p.seq is None, p.seq or 0))


def authentic(checkpoints: Iterable[Checkpoint], keyring: Keyring) -> tuple[list[Checkpoint], list[Problem]]:
    """The checkpoints the audit writer's key signed, and a problem for each other one."""
    good, problems = [], []
    for c in checkpoints:
        why = authenticity_problem(c, keyring)
        if why is None:
            good.append(c)
        else:
            problems.append(Problem(c.seq, None, FORGED_CHECKPOINT, f"{c.key}: {why}"))
    return good, problems


def record_evidence(checkpoint: Checkpoint, bucket: str) -> dict[str, object]:
    """What the `checkpoint` audit record carries: the checkpoint itself and where it is kept."""
    return {**checkpoint.as_dict(), "object": f"s3://{bucket}/{checkpoint.key}"}

