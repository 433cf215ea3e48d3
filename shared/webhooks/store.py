"""The webhooks tables (migrations 0012, 0016): endpoints, deliveries, attempts, endpoint changes.

Used by the service (recording and sending), and by the CLI and the API (managing endpoints,
reading the log, asking for tests and replays, which the service's worker then sends).
Every function takes a connection or pool and runs one statement or one short transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.outbox import OutboxRow, write_outbox

from .logic import Format, Message, Subscription

SERVICE = "webhooks"
MAX_LIST = 1000
_ENDPOINT = """id, name, url, description, secret, format, topics, models, stages, mlflow_events, status,
               failing_since, disabled_at, disabled_reason, created_by, created_at, updated_at"""


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    name: str
    url: str
    description: str | None
    secret: str
    format: Format
    subscription: Subscription
    mlflow_events: tuple[str, ...]
    status: str
    failing_since: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> Endpoint:
        return cls(row["id"], row["name"], row["url"], row["description"], row["secret"], row["format"],
                   Subscription(tuple(row["topics"]), tuple(row["models"]), tuple(row["stages"])),
                   tuple(row["mlflow_events"]), row["status"], row["failing_since"], row["disabled_at"],
                   row["disabled_reason"], row["created_by"], row["created_at"], row["updated_at"])

    def public(self, *, with_secret: bool = False) -> dict[str, Any]:
        """As the CLI and the API show it; the secret only when asked (right after creation)."""
        out: dict[str, Any] = {
            "id": str(self.id), "name": self.name, "url": self.url, "description": self.description,
            "format": self.format, "topics": list(self.subscription.topics),
            "models": list(self.subscription.models), "stages": list(self.subscription.stages),
            "status": self.status, "failing_since": _iso(self.failing_since), "disabled_at": _iso(self.disabled_at),
            "disabled_reason": self.disabled_reason, "created_by": self.created_by,
            "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at)}
        if self.format == "mlflow":
            out["mlflow_events"] = list(self.mlflow_events)
        if with_secret:
            out["secret"] = self.secret
        return out


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# -- endpoints -----------------------------------------------------------------------------


def audit_key(endpoint_id: uuid.UUID) -> str:
    """The Kafka key of an endpoint's audit records. They are about no model, and a record
    without a key lands on any partition: an endpoint's deletion could then reach the audit
    log ahead of its creation. One key per endpoint keeps its changes in order."""
    return f"webhook-endpoint/{endpoint_id}"


# What an endpoint change's audit record says about the endpoint (never its secret).
_CHANGE = """jsonb_build_object('name', name, 'url', url, 'format', format, 'topics', topics, 'models', models,
                                'stages', stages, 'status', status)"""


async def create_endpoint(conn: Any, *, name: str, url: str, description: str | None, secret: str,
                          fmt: Format, subscription: Subscription, mlflow_events: Sequence[str] = (),
                          created_by: str, active: bool = True) -> Endpoint:
    """The endpoint, and (in the same statement) the change the service audits."""
    row = await conn.fetchrow(
        f"""WITH made AS (
                INSERT INTO webhook_endpoints (id, name, url, description, secret, format, topics, models, stages,
                                               mlflow_events, status, disabled_at, disabled_reason, created_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                        CASE WHEN $11 = 'disabled' THEN now() END,
                        CASE WHEN $11 = 'disabled' THEN 'created disabled' END, $12)
                RETURNING {_ENDPOINT}),
            logged AS (
                INSERT INTO webhook_endpoint_changes (endpoint_id, action, actor, evidence)
                SELECT id, 'webhook_created', created_by, {_CHANGE} FROM made)
            SELECT * FROM made""",
        uuid.uuid4(), name, url, description, secret, fmt, list(subscription.topics), list(subscription.models),
        list(subscription.stages), list(mlflow_events), "active" if active else "disabled", created_by)
    return Endpoint.of(row)


async def get_endpoint(conn: Any, endpoint_id: uuid.UUID) -> Endpoint | None:
    row = await conn.fetchrow(f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1", endpoint_id)
    return Endpoint.of(row) if row is not None else None


async def list_endpoints(conn: Any, *, fmt: Format | None = None, limit: int = MAX_LIST,
                         after: uuid.UUID | None = None) -> list[Endpoint]:
    rows = await conn.fetch(
        f"""SELECT {_ENDPOINT} FROM webhook_endpoints
            WHERE ($1::text IS NULL OR format = $1) AND ($2::uuid IS NULL OR id > $2)
            ORDER BY id LIMIT $3""", fmt, after, limit)
    return [Endpoint.of(r) for r in rows]


async def update_endpoint(conn: Any, endpoint_id: uuid.UUID, **changes: Any) -> Endpoint | None:
    """Set the given columns (name, url, description, secret, topics, mlflow_events, status);
    enabling clears the failure clock, disabling records when and why."""
    allowed = {"name", "url", "description", "secret", "topics", "models", "stages", "mlflow_events"}
    sets, values = [], [endpoint_id]
    for column, value in changes.items():
        if column == "status":
            continue
        if column not in allowed:
            raise ValueError(f"not an endpoint column: {column}")
        values.append(value)
        sets.append(f"{column} = ${len(values)}")
    if (status := changes.get("status")) is not None:
        values.append(status)
        n = len(values)
        sets.append(f"""status = ${n},
            failing_since = CASE WHEN ${n} = 'active' THEN NULL ELSE failing_since END,
            disabled_at = CASE WHEN ${n} = 'active' THEN NULL ELSE COALESCE(disabled_at, now()) END,
            disabled_reason = CASE WHEN ${n} = 'active' THEN NULL
                                   ELSE COALESCE(disabled_reason, 'disabled by an admin') END""")
    sets.append("updated_at = now()")
    row = await conn.fetchrow(
        f"UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = $1 RETURNING {_ENDPOINT}", *values)
    return Endpoint.of(row) if row is not None else None


async def delete_endpoint(conn: Any, endpoint_id: uuid.UUID, *, deleted_by: str) -> bool:
    """The endpoint, its deliveries and their attempts; and (in the same statement) the change
    the service audits, naming who deleted it."""
    return await conn.fetchval(
        f"""WITH gone AS (DELETE FROM webhook_endpoints WHERE id = $1 RETURNING *),
                 logged AS (INSERT INTO webhook_endpoint_changes (endpoint_id, action, actor, evidence)
                            SELECT id, 'webhook_deleted', $2, {_CHANGE} FROM gone)
            SELECT true FROM gone""", endpoint_id, deleted_by) is True


@dataclass(frozen=True)
class EndpointChange:
    """An endpoint created or deleted, waiting for its audit record."""

    id: int
    endpoint_id: uuid.UUID
    action: str
    actor: str
    evidence: dict[str, Any]
    changed_at: datetime


async def audit_endpoint_changes(pool: asyncpg.Pool, audit: Callable[[EndpointChange], OutboxRow],
                                 limit: int = 100) -> int:
    """Up to `limit` unaudited endpoint changes, oldest first: their audit records (`audit`)
    written to the outbox and the changes marked audited, in one transaction; how many.
    A second replica waits for the first rather than skipping its rows: skipping would let it
    write an endpoint's later change to the outbox ahead of the earlier one."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT id, endpoint_id, action, actor, evidence, changed_at FROM webhook_endpoint_changes
               WHERE audited_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE""", limit)
        if not rows:
            return 0
        changes = [EndpointChange(r["id"], r["endpoint_id"], r["action"], r["actor"], _json(r["evidence"]),
                                  r["changed_at"]) for r in rows]
        await write_outbox(conn, SERVICE, [audit(c) for c in changes])
        await conn.execute("UPDATE webhook_endpoint_changes SET audited_at = now() WHERE id = ANY($1::bigint[])",
                           [c.id for c in changes])
    return len(changes)


def _json(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


async def prune_deliveries(pool: asyncpg.Pool, before: datetime, *, batch: int = 1000,
                           max_batches: int = 100) -> int:
    """Delete finished deliveries (delivered or failed; their attempts go with them) that
    finished before `before`, oldest first, `batch` rows per transaction so no long lock is
    held, at most `max_batches` (the next round goes on); how many. Pending ones are kept."""
    pruned = 0
    for _ in range(max_batches):
        async with pool.acquire() as conn:
            deleted = await conn.fetchval(
                """WITH doomed AS (
                       SELECT id FROM webhook_deliveries
                       WHERE status <> 'pending' AND finished_at < $1
                       ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED),
                   gone AS (DELETE FROM webhook_deliveries d USING doomed WHERE d.id = doomed.id RETURNING 1)
                   SELECT count(*) FROM gone""", before, batch)
        pruned += deleted
        if deleted < batch:
            break
    return pruned


async def subscribed_topics(conn: Any) -> set[str]:
    """The event types the active endpoints subscribe to (`*` among them: every type)."""
    return {r[0] for r in await conn.fetch(
        "SELECT DISTINCT unnest(topics) FROM webhook_endpoints WHERE status = 'active'")}


async def active_endpoints(conn: Any) -> list[Endpoint]:
    rows = await conn.fetch(f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE status = 'active' ORDER BY id")
    return [Endpoint.of(r) for r in rows]


# -- deliveries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewDelivery:
    endpoint_id: uuid.UUID
    message: Message
    event_id: uuid.UUID | None
    topic: str
    model: str


async def record_deliveries(conn: Any, deliveries: Sequence[NewDelivery]) -> None:
    """Pending deliveries of consumed events, in the order given (which is the order they go
    out in per endpoint and model); an event recorded before is not recorded again."""
    if not deliveries:
        return
    await conn.execute(
        """INSERT INTO webhook_deliveries (endpoint_id, message_id, event_id, topic, model, body)
           SELECT endpoint_id, message_id, event_id, topic, model, body
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[])
                WITH ORDINALITY AS d(endpoint_id, message_id, event_id, topic, model, body, n)
           ORDER BY n
           ON CONFLICT (endpoint_id, message_id) WHERE kind = 'event' DO NOTHING""",
        [d.endpoint_id for d in deliveries], [d.message.message_id for d in deliveries],
        [d.event_id for d in deliveries], [d.topic for d in deliveries], [d.model for d in deliveries],
        [d.message.body for d in deliveries])


@dataclass(frozen=True)
class Claimed:
    """A delivery a worker is sending, with what it needs to send it."""

    id: int
    endpoint_id: uuid.UUID
    message_id: uuid.UUID
    body: str
    kind: str
    attempts: int
    url: str
    secret: str
    format: Format


async def claim_due(pool: asyncpg.Pool, now: datetime, lease_seconds: float, limit: int) -> list[Claimed]:
    """Due deliveries nobody is sending, at most one per endpoint and model and only the
    earliest pending one of each (so one model's deliveries to an endpoint keep their order),
    leased to this worker for `lease_seconds`. Tests go out to disabled endpoints too."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """WITH due AS (
                   SELECT d.id FROM webhook_deliveries d
                   JOIN webhook_endpoints e ON e.id = d.endpoint_id
                   WHERE d.status = 'pending' AND d.next_attempt_at <= $1
                     AND (d.claimed_until IS NULL OR d.claimed_until < $1)
                     AND (e.status = 'active' OR d.kind = 'test')
                     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                                     WHERE p.endpoint_id = d.endpoint_id AND p.model = d.model
                                       AND p.status = 'pending' AND p.id < d.id)
                   ORDER BY d.next_attempt_at, d.id
                   LIMIT $3
                   FOR UPDATE OF d SKIP LOCKED)
               UPDATE webhook_deliveries d SET claimed_until = $1 + make_interval(secs => $2)
               FROM due, webhook_endpoints e
               WHERE d.id = due.id AND e.id = d.endpoint_id
               RETURNING d.id, d.endpoint_id, d.message_id, d.body, d.kind, d.attempts, e.url, e.secret, e.format""",
            now, lease_seconds, limit)
    return [Claimed(r["id"], r["endpoint_id"], r["message_id"], r["body"], r["kind"], r["attempts"], r["url"],
                    r["secret"], r["format"]) for r in sorted(rows, key=lambda r: r["id"])]


@dataclass(frozen=True)
class Attempt:
    """One try, as the log keeps it."""

    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: str | None


async def record_attempt(pool: asyncpg.Pool, claimed: Claimed, attempt: Attempt, *, delivered: bool,
                         retry_at: datetime | None, endpoint_failing_since: datetime | None,
                         disable_reason: str | None, on_disable: Sequence[OutboxRow] = ()) -> None:
    """The attempt, the delivery's new state (delivered, failed for good, or due again at
    `retry_at`) and the endpoint's failure clock (disabled when `disable_reason`; a disabled
    endpoint's pending deliveries are failed with it: a replay sends them again), with
    `on_disable` (its audit record) written to the outbox then, in the same transaction. A
    delivery that got through makes the endpoint's retries that are backing off due at once."""
    number = claimed.attempts + 1
    status = "delivered" if delivered else ("pending" if retry_at is not None else "failed")
    async with pool.acquire() as conn, conn.transaction():
        updated = await conn.fetchval(
            """UPDATE webhook_deliveries
               SET attempts = $2, status = $3::text, next_attempt_at = COALESCE($4::timestamptz, next_attempt_at),
                   claimed_until = NULL, last_status = $5, last_error = $6,
                   finished_at = CASE WHEN $3::text <> 'pending' THEN $7::timestamptz END
               WHERE id = $1 RETURNING true""",
            claimed.id, number, status, retry_at, attempt.status_code, attempt.error, attempt.attempted_at)
        if not updated:
            return  # its endpoint was deleted while it was being sent: nothing left to log it in
        await conn.execute(
            """INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms, error,
                                             response_excerpt, retry_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            claimed.id, number, attempt.attempted_at, attempt.status_code, attempt.latency_ms, attempt.error,
            attempt.response_excerpt, retry_at)
        if claimed.kind == "test":
            return  # a test says nothing about the endpoint's health
        if disable_reason is not None:
            await conn.execute(
                """UPDATE webhook_endpoints SET status = 'disabled', disabled_at = $2, disabled_reason = $3,
                          failing_since = $4, updated_at = $2
                   WHERE id = $1 AND status = 'active'""",
                claimed.endpoint_id, attempt.attempted_at, disable_reason, endpoint_failing_since)
            await conn.execute(
                """UPDATE webhook_deliveries SET status = 'failed', finished_at = $2, claimed_until = NULL,
                          last_error = COALESCE(last_error, '') || ' (endpoint disabled)'
                   WHERE endpoint_id = $1 AND status = 'pending' AND kind <> 'test'""",
                claimed.endpoint_id, attempt.attempted_at)
            await write_outbox(conn, SERVICE, on_disable)
        else:
            await conn.execute(
                """UPDATE webhook_endpoints SET failing_since = $2::timestamptz
                   WHERE id = $1 AND failing_since IS DISTINCT FROM $2::timestamptz""",
                claimed.endpoint_id, endpoint_failing_since)
            if delivered:
                # The receiver answers again: its deliveries backing off after failed attempts
                # are due now, not at the end of their delays (claim_due keeps each model's order).
                await conn.execute(
                    """UPDATE webhook_deliveries SET next_attempt_at = $2
                       WHERE endpoint_id = $1 AND status = 'pending' AND attempts > 0 AND next_attempt_at > $2""",
                    claimed.endpoint_id, attempt.attempted_at)


async def endpoint_failing_since(pool: asyncpg.Pool, endpoint_id: uuid.UUID) -> datetime | None:
    async with pool.acquire() as conn:
        since: datetime | None = await conn.fetchval(
            "SELECT failing_since FROM webhook_endpoints WHERE id = $1", endpoint_id)
        return since


# -- the log, tests and replays ------------------------------------------------------------

_DELIVERY = """d.id, d.endpoint_id, d.message_id, d.event_id, d.topic, d.model, d.kind, d.replay_of, d.requested_by,
               d.status, d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.finished_at"""


def _delivery(row: asyncpg.Record, attempts: list[asyncpg.Record] | None = None) -> dict[str, Any]:
    out = {k: (str(v) if isinstance(v, uuid.UUID) else _iso(v) if isinstance(v, datetime) else v)
           for k, v in dict(row).items()}
    if attempts is not None:
        out["attempt_log"] = [{"attempt": a["attempt"], "attempted_at": _iso(a["attempted_at"]),
                               "status_code": a["status_code"], "latency_ms": round(a["latency_ms"], 1),
                               "error": a["error"], "response_excerpt": a["response_excerpt"],
                               "retry_at": _iso(a["retry_at"])} for a in attempts]
    return out


async def list_deliveries(conn: Any, *, endpoint_id: uuid.UUID | None = None, status: str | None = None,
                          since: datetime | None = None, limit: int = 100,
                          with_attempts: bool = False) -> list[dict[str, Any]]:
    """Deliveries newest first, each with its attempts when asked."""
    rows = await conn.fetch(
        f"""SELECT {_DELIVERY} FROM webhook_deliveries d
            WHERE ($1::uuid IS NULL OR d.endpoint_id = $1) AND ($2::text IS NULL OR d.status = $2)
              AND ($3::timestamptz IS NULL OR d.created_at >= $3)
            ORDER BY d.id DESC LIMIT $4""", endpoint_id, status, since, limit)
    if not with_attempts:
        return [_delivery(r) for r in rows]
    attempts = await conn.fetch(
        """SELECT delivery_id, attempt, attempted_at, status_code, latency_ms, error, response_excerpt, retry_at
           FROM webhook_attempts WHERE delivery_id = ANY($1::bigint[]) ORDER BY id""", [r["id"] for r in rows])
    by_delivery: dict[int, list[asyncpg.Record]] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    return [_delivery(r, by_delivery.get(r["id"], [])) for r in rows]


async def get_delivery(conn: Any, delivery_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_DELIVERY} FROM webhook_deliveries d WHERE d.id = $1", delivery_id)
    if row is None:
        return None
    attempts = await conn.fetch(
        """SELECT delivery_id, attempt, attempted_at, status_code, latency_ms, error, response_excerpt, retry_at
           FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id""", delivery_id)
    return _delivery(row, list(attempts))


async def redeliver(conn: Any, *, requested_by: str, delivery_id: int | None = None,
                    endpoint_id: uuid.UUID | None = None, since: datetime | None = None) -> list[int]:
    """Send again, as new deliveries with the same message id (the receiver's idempotency
    key), one delivery or every event delivery of an endpoint recorded since `since`, in their
    original order; returns the new deliveries' ids. The endpoint must be active (or enabled
    first): a disabled endpoint is sent nothing but tests."""
    rows = await conn.fetch(
        """INSERT INTO webhook_deliveries (endpoint_id, message_id, event_id, topic, model, body, kind, replay_of,
                                           requested_by)
           SELECT d.endpoint_id, d.message_id, d.event_id, d.topic, d.model, d.body, 'replay', d.id, $4
           FROM webhook_deliveries d
           WHERE CASE WHEN $1::bigint IS NOT NULL THEN d.id = $1
                      ELSE d.endpoint_id = $2 AND d.kind = 'event' AND d.created_at >= $3 END
             AND d.kind <> 'test'
           ORDER BY d.id
           RETURNING id""", delivery_id, endpoint_id, since, requested_by)
    return sorted(r["id"] for r in rows)


async def request_test(conn: Any, endpoint_id: uuid.UUID, message: Message, *, requested_by: str) -> int:
    delivery_id: int = await conn.fetchval(
        """INSERT INTO webhook_deliveries (endpoint_id, message_id, topic, model, body, kind, requested_by)
           VALUES ($1, $2, 'webhook.test', '', $3, 'test', $4) RETURNING id""",
        endpoint_id, message.message_id, message.body, requested_by)
    return delivery_id


async def finished(conn: Any, delivery_id: int) -> dict[str, Any] | None:
    """The delivery once its first attempt is logged (None before). Judged by the delivery's
    own row, read first: its attempt rows commit with it, so they are there when it says so."""
    found = await get_delivery(conn, delivery_id)
    return found if found is not None and found["attempts"] > 0 else None
