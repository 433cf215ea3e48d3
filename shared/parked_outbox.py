"""Outbox rows Kafka refused for good (shared/outbox.py parks them): list, retry, discard.

A parked row holds back its model's later rows on its topic. Retrying moves it back into the outbox under
its own id, so the relay sends it before them; if Kafka refuses it again it is parked again.
Discarding gives up on it (the row stays here, marked with who and when) and lets the model's
later rows there go.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.outbox import NOTIFY_CHANNEL

MAX_LIST = 1000


async def list_parked(conn: asyncpg.Connection, *, service: str | None = None,
                      include_discarded: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT p.id, p.service, p.topic, p.key, p.reason, p.error, p.state, p.parked_at,
                  p.discarded_at, p.discarded_by, length(p.value) AS size_bytes,
                  (SELECT count(*) FROM outbox o WHERE o.service = p.service AND o.key = p.key
                                                  AND p.state = 'parked') AS held_back
           FROM outbox_parked p
           WHERE ($1::text IS NULL OR p.service = $1) AND ($2 OR p.state = 'parked')
           ORDER BY p.id LIMIT $3""",
        service, include_discarded, limit)
    return [_plain(r) for r in rows]


async def retry_parked(conn: asyncpg.Connection, ids: list[int] | None = None, *,
                       service: str | None = None) -> list[int]:
    """Move parked rows (these ids, or every parked row of `service`, or every parked row)
    back into the outbox under their own ids; returns the ids moved."""
    async with conn.transaction():
        moved = await conn.fetch(
            """WITH chosen AS (
                   DELETE FROM outbox_parked
                   WHERE state = 'parked' AND ($1::bigint[] IS NULL OR id = ANY($1))
                     AND ($2::text IS NULL OR service = $2)
                   RETURNING id, service, topic, key, value, headers, parked_at)
               INSERT INTO outbox (id, service, topic, key, value, headers)
               SELECT id, service, topic, key, value, headers FROM chosen
               RETURNING id, service""",
            ids, service)
        for service_name in sorted({r["service"] for r in moved}):
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, service_name)
    return sorted(r["id"] for r in moved)


async def discard_parked(conn: asyncpg.Connection, ids: list[int], actor: str) -> list[int]:
    """Give up on these parked rows (kept, marked discarded by `actor`): their models' later
    rows are sent. Returns the ids discarded (a row already discarded or retried is not)."""
    rows = await conn.fetch(
        """UPDATE outbox_parked SET state = 'discarded', discarded_at = now(), discarded_by = $2
           WHERE id = ANY($1::bigint[]) AND state = 'parked' RETURNING id, service""",
        ids, actor)
    for service_name in sorted({r["service"] for r in rows}):
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, service_name)
    return sorted(r["id"] for r in rows)


def _plain(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for name in ("parked_at", "discarded_at"):
        if out[name] is not None:
            out[name] = out[name].isoformat()
    return out
