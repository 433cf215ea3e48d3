"""The `dead_letters` table: what the audit writer projects from `registry.dlq`, and what ops
read and redrive through `modelreg dlq` and `/api/v1/dlq` (here, not in services/audit/, since
the API and the CLI read it too and services import no other service).

Pure pieces (a letter from its DLQ event, the readable form of the original bytes, the
`redriven` audit record) are plain functions; the SQL is the functions taking a connection.
A redrive is only *requested* here; the audit writer performs it (services/audit/dlq.py).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.events import MODEL_NAME_PATTERN, UNKNOWN_MODEL, CloudEvent, RegistryAuditData, RegistryDlqData

_NAME = re.compile(MODEL_NAME_PATTERN)
MAX_LIST = 1000
# Printable text below this many characters is shown as text; bigger payloads only in base64.
MAX_TEXT_CHARS = 1024 * 1024

_COLUMNS = ("id, service, kind, message, original_topic, \"partition\", \"offset\", key, "
            "octet_length(payload) AS size_bytes, original_event_id, correlation_id, dead_lettered_at, "
            "redrive_requested_at, redrive_requested_by, redriven_at, redriven_by")


class BadPayload(ValueError):
    """A DLQ event whose payload_b64 is not base64 (its producer is broken, not the record)."""


@dataclass(frozen=True)
class Letter:
    """One dead letter as projected from its `registry.dlq` event."""

    id: uuid.UUID
    service: str
    kind: str
    message: str
    original_topic: str
    partition: int | None
    offset: int | None
    key: str | None
    payload: bytes
    original_event_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    dead_lettered_at: datetime


def letter_of(event: CloudEvent[RegistryDlqData]) -> Letter:
    """A DLQ event as a row. Its causation id is the original event's id where the record
    parsed (`dead_letter_rows` sets it so): the id its consumer recorded as processed. Where
    it did not, both ids default to the DLQ event's own (`new_event`): no original event."""
    data = event.data
    try:
        payload = base64.b64decode(data.payload_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadPayload(f"payload_b64 of DLQ event {event.id} is not base64: {exc}") from None
    return Letter(id=event.id, service=data.service, kind=data.error.kind, message=data.error.message,
                  original_topic=data.original_topic, partition=data.partition, offset=data.offset,
                  key=data.key, payload=payload,
                  original_event_id=event.causationid if event.causationid != event.id else None,
                  correlation_id=event.correlationid if event.correlationid != event.id else None,
                  dead_lettered_at=event.time)


def payload_text(payload: bytes) -> str | None:
    """The original bytes as text when they are UTF-8 without control characters (JSON,
    mostly); None when they must be shown as base64."""
    if len(payload) > MAX_TEXT_CHARS:
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return None
    return text


def model_of(key: str | None) -> str:
    """The model a letter is about, for its audit record: the record's key when it is a name."""
    return key if key and _NAME.match(key) else UNKNOWN_MODEL


def redriven_audit(row: asyncpg.Record | dict[str, Any]) -> RegistryAuditData:
    """The `redriven` audit record of a letter being republished at its requester's word."""
    return RegistryAuditData(
        action="redriven", name=model_of(row["key"]), actor=row["redrive_requested_by"],
        reason=f"republished to {row['original_topic']} the record {row['service']} dead-lettered "
               f"({row['kind']})",
        evidence={"dlq_event_id": str(row["id"]), "topic": row["original_topic"], "partition": row["partition"],
                  "offset": row["offset"], "service": row["service"], "kind": row["kind"],
                  "original_event_id": str(row["original_event_id"]) if row["original_event_id"] else None,
                  "requested_at": row["redrive_requested_at"].isoformat()})


# ---------------------------------------------------------------------------- SQL


async def record(conn: asyncpg.Connection, letters: Sequence[Letter]) -> int:
    """Insert letters not yet known (a redelivered DLQ event changes nothing)."""
    if not letters:
        return 0
    rows = await conn.fetch(
        """INSERT INTO dead_letters (id, service, kind, message, original_topic, "partition", "offset", key,
                                     payload, original_event_id, correlation_id, dead_lettered_at)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                                $7::bigint[], $8::text[], $9::bytea[], $10::uuid[], $11::uuid[], $12::timestamptz[])
           ON CONFLICT (id) DO NOTHING RETURNING id""",
        [x.id for x in letters], [x.service for x in letters], [x.kind for x in letters],
        [x.message for x in letters], [x.original_topic for x in letters], [x.partition for x in letters],
        [x.offset for x in letters], [x.key for x in letters], [x.payload for x in letters],
        [x.original_event_id for x in letters], [x.correlation_id for x in letters],
        [x.dead_lettered_at for x in letters])
    return len(rows)


def summary(row: asyncpg.Record) -> dict[str, Any]:
    """A letter without its bytes, as the list shows it (JSON-ready)."""
    return {
        "id": str(row["id"]), "service": row["service"], "kind": row["kind"], "message": row["message"],
        "original_topic": row["original_topic"], "partition": row["partition"], "offset": row["offset"],
        "key": row["key"], "size_bytes": row["size_bytes"],
        "original_event_id": str(row["original_event_id"]) if row["original_event_id"] else None,
        "correlation_id": str(row["correlation_id"]) if row["correlation_id"] else None,
        "dead_lettered_at": row["dead_lettered_at"].isoformat(),
        "redrive": {
            "requested_at": _iso(row["redrive_requested_at"]), "requested_by": row["redrive_requested_by"],
            "redriven_at": _iso(row["redriven_at"]), "redriven_by": row["redriven_by"],
        },
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _filters(service: str | None, kind: str | None, since: datetime | None,
             pending_only: bool = False) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (("service", service), ("kind", kind)):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    if since is not None:
        args.append(since)
        clauses.append(f"dead_lettered_at >= ${len(args)}")
    if pending_only:
        clauses.append("redrive_requested_at IS NULL")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


async def list_letters(conn: asyncpg.Connection | asyncpg.Pool, *, service: str | None = None,
                       kind: str | None = None, since: datetime | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
    """Newest first."""
    where, args = _filters(service, kind, since)
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM dead_letters{where} "
                            f"ORDER BY dead_lettered_at DESC, id LIMIT {min(max(limit, 1), MAX_LIST)}", *args)
    return [summary(r) for r in rows]


async def show(conn: asyncpg.Connection | asyncpg.Pool, letter_id: uuid.UUID) -> dict[str, Any] | None:
    """One letter: its summary, the original bytes (base64, and as text where they are text),
    and the audit records that name it (`dead_lettered`, `redriven`)."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS}, payload FROM dead_letters WHERE id = $1", letter_id)
    if row is None:
        return None
    audit = await conn.fetch(
        """SELECT seq, event_id, action, name, version, actor, reason, evidence, occurred_at
           FROM audit_log WHERE evidence ? 'dlq_event_id' AND evidence ->> 'dlq_event_id' = $1 ORDER BY seq""",
        str(letter_id))
    return {**summary(row), "payload_b64": base64.b64encode(row["payload"]).decode(),
            "payload_text": payload_text(row["payload"]),
            "audit": [{"seq": a["seq"], "event_id": str(a["event_id"]), "action": a["action"], "name": a["name"],
                       "version": a["version"], "actor": a["actor"], "reason": a["reason"],
                       "evidence": a["evidence"], "occurred_at": a["occurred_at"].isoformat()} for a in audit]}


@dataclass(frozen=True)
class RedriveRequests:
    """What a redrive request did: letters newly asked for, and those asked for before (left
    as they were: a second request changes nothing)."""

    requested: list[uuid.UUID]
    already: list[dict[str, Any]]


async def request_redrive(conn: asyncpg.Connection | asyncpg.Pool, letter_id: uuid.UUID,
                          actor: str) -> RedriveRequests | None:
    """Ask for one letter's redrive; None when there is no such letter."""
    requested = await conn.fetchval(
        """UPDATE dead_letters SET redrive_requested_at = now(), redrive_requested_by = $2
           WHERE id = $1 AND redrive_requested_at IS NULL RETURNING id""", letter_id, actor)
    if requested is not None:
        return RedriveRequests([requested], [])
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = $1", letter_id)
    return None if row is None else RedriveRequests([], [summary(row)])


async def request_redrive_matching(conn: asyncpg.Connection | asyncpg.Pool, *, kind: str,
                                   service: str | None, actor: str) -> RedriveRequests:
    """Ask for the redrive of every letter of `kind` (and `service`) not asked for yet."""
    where, args = _filters(service, kind, None, pending_only=True)
    args.append(actor)
    rows = await conn.fetch(
        f"""UPDATE dead_letters SET redrive_requested_at = now(), redrive_requested_by = ${len(args)}
            WHERE id IN (SELECT id FROM dead_letters{where} FOR UPDATE SKIP LOCKED) RETURNING id""", *args)
    return RedriveRequests([r["id"] for r in rows], [])


async def redrive_state(conn: asyncpg.Connection | asyncpg.Pool,
                        ids: Sequence[uuid.UUID]) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ANY($1::uuid[])", list(ids))
    return [summary(r) for r in rows]
