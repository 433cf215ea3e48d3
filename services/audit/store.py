"""audit's SQL: appending to the hash-chained `audit_log`, walking it, and its newest rows.

Appends are serialised by the single `audit_chain_head` row, locked FOR UPDATE for the rest
of the caller's transaction: whatever partition or instance a batch comes from, it extends
the one chain from its current head, and seqs are drawn under that lock, so rows commit in
seq order (a reader polling `seq > last` never misses a row committed late).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from .chain import AuditRecord, ChainHead, ChainRow, Problem, Verifier, chain
from .checkpoint import Checkpoint, CheckpointAudit

_CONTENT = ("event_id, action, name, version, from_stage, to_stage, actor, reason, evidence, "
            "correlation_id, causation_id, source, occurred_at")
_ROW = ("seq, prev_hash, hash, event_id, action, name, version, from_stage, to_stage, actor, "
        "reason, evidence::text AS evidence, correlation_id, causation_id, source, occurred_at")


class MissingHead(RuntimeError):
    """The chain head row is missing: the migrations were not applied (or it was deleted)."""


async def lock_head(conn: asyncpg.Connection) -> ChainHead:
    """The chain head, locked until the caller's transaction ends."""
    row = await conn.fetchrow(
        "SELECT last_seq, last_hash, row_count FROM audit_chain_head WHERE id FOR UPDATE")
    if row is None:
        raise MissingHead("the audit chain head is missing")
    return ChainHead(row["last_seq"], row["last_hash"], row["row_count"])


async def read_head(conn: asyncpg.Connection) -> ChainHead | None:
    row = await conn.fetchrow("SELECT last_seq, last_hash, row_count FROM audit_chain_head WHERE id")
    return ChainHead(row["last_seq"], row["last_hash"], row["row_count"]) if row else None


async def append(conn: asyncpg.Connection, records: Sequence[AuditRecord]) -> list[ChainRow]:
    """Append `records` in order, inside the caller's transaction; returns the rows written.

    Records whose event is already in the log (or repeated in `records`) are left out, so the
    chain never links a row that the unique `event_id` would then refuse.
    """
    if not records:
        return []
    head = await lock_head(conn)
    known = {r["event_id"] for r in await conn.fetch(
        "SELECT event_id FROM audit_log WHERE event_id = ANY($1::uuid[])",
        [r.event_id for r in records])}
    fresh: list[AuditRecord] = []
    for record in records:
        if record.event_id not in known:
            known.add(record.event_id)
            fresh.append(record)
    if not fresh:
        return []
    seqs = sorted(r[0] for r in await conn.fetch(
        "SELECT nextval(pg_get_serial_sequence('audit_log', 'seq')) FROM generate_series(1, $1)",
        len(fresh)))
    rows, new_head = chain(fresh, head, seqs)
    await conn.execute(
        f"""INSERT INTO audit_log (seq, prev_hash, hash, {_CONTENT})
            SELECT seq, prev_hash, hash, event_id, action, name, version, from_stage, to_stage,
                   actor, reason, evidence::jsonb, correlation_id, causation_id, source, occurred_at
            FROM unnest($1::bigint[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                        $7::int[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                        $13::uuid[], $14::uuid[], $15::text[], $16::timestamptz[])
                 AS t(seq, prev_hash, hash, event_id, action, name, version, from_stage, to_stage,
                      actor, reason, evidence, correlation_id, causation_id, source, occurred_at)
            ORDER BY seq""",
        [r.seq for r in rows], [r.prev_hash for r in rows], [r.hash for r in rows],
        *_columns([r.record for r in rows]))
    await conn.execute(
        """UPDATE audit_chain_head
           SET last_seq = $1, last_hash = $2, row_count = $3, updated_at = now() WHERE id""",
        new_head.last_seq, new_head.last_hash, new_head.row_count)
    return rows


def _columns(records: list[AuditRecord]) -> list[list[Any]]:
    return [
        [r.event_id for r in records],
        [r.action for r in records],
        [r.name for r in records],
        [r.version for r in records],
        [r.from_stage for r in records],
        [r.to_stage for r in records],
        [r.actor for r in records],
        [r.reason for r in records],
        [json.dumps(r.evidence, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
         for r in records],
        [r.correlation_id for r in records],
        [r.causation_id for r in records],
        [r.source for r in records],
        [r.occurred_at for r in records],
    ]


def _row(r: asyncpg.Record) -> ChainRow:
    record = AuditRecord(
        event_id=r["event_id"], action=r["action"], name=r["name"], version=r["version"],
        from_stage=r["from_stage"], to_stage=r["to_stage"], actor=r["actor"], reason=r["reason"],
        evidence=json.loads(r["evidence"]), correlation_id=r["correlation_id"],
        causation_id=r["causation_id"], source=r["source"], occurred_at=r["occurred_at"])
    return ChainRow(r["seq"], r["prev_hash"], r["hash"], record)


async def rows(conn: asyncpg.Connection, *, prefetch: int = 1000, after: int = 0,
               upto: int | None = None) -> AsyncIterator[ChainRow]:
    """Every row (with `after` < seq <= `upto`) in seq order through a server-side cursor
    (call inside a transaction)."""
    async for r in conn.cursor(
            f"SELECT {_ROW} FROM audit_log WHERE seq > $1 AND ($2::bigint IS NULL OR seq <= $2) ORDER BY seq",
            after, upto, prefetch=prefetch):
        yield _row(r)


@dataclass(frozen=True)
class Verification:
    problems: list[Problem]
    head: ChainHead
    count: int

    @property
    def intact(self) -> bool:
        return not self.problems


async def verify(conn: asyncpg.Connection, checkpoints: Sequence[Checkpoint] = ()) -> Verification:
    """Walk the whole chain against its head, and against the signed `checkpoints` (already
    checked authentic), in one snapshot, in constant memory."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await read_head(conn)
        if head is None:
            raise MissingHead("the audit chain head is missing")
        verifier, against = Verifier(), CheckpointAudit(checkpoints)
        async for row in rows(conn):
            verifier.feed(row)
            against.feed(row)
        return Verification(verifier.finish(head) + against.finish(head), head, verifier.count)


_TAIL = ("seq, occurred_at, recorded_at, event_id, action, name, version, from_stage, to_stage, "
         "actor, reason, evidence::text AS evidence, correlation_id, causation_id, source, hash")


async def tail(conn: asyncpg.Connection, *, model: str | None = None, limit: int = 20,
               after_seq: int | None = None) -> list[dict[str, Any]]:
    """The newest `limit` rows (oldest first); with `after_seq`, the first `limit` after it."""
    if after_seq is None:
        found = await conn.fetch(
            f"""SELECT {_TAIL} FROM audit_log WHERE ($1::text IS NULL OR name = $1)
                ORDER BY seq DESC LIMIT $2""", model, limit)
        found = list(reversed(found))
    else:
        found = await conn.fetch(
            f"""SELECT {_TAIL} FROM audit_log WHERE ($1::text IS NULL OR name = $1) AND seq > $3
                ORDER BY seq LIMIT $2""", model, limit, after_seq)
    return [{**dict(r), "evidence": json.loads(r["evidence"])} for r in found]
