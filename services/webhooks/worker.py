"""The delivery worker: sends due deliveries, logs each attempt, schedules retries.

It never holds a transaction while it waits on a receiver: deliveries are claimed (leased for
longer than a request may take) in one short transaction, sent, and each attempt's outcome is
recorded in another. A worker that dies mid-send leaves a lease that runs out; the delivery is
sent again (at least once: receivers deduplicate on `webhook-id`). Several replicas may run
workers: claims skip rows another holds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.consumer import is_retryable
from shared.events import UNKNOWN_MODEL, RegistryAudit, RegistryAuditData, new_event
from shared.outbox import OutboxRow
from shared.webhooks import logic, store

from .sender import Outcome, Sender

log = logging.getLogger(__name__)

IN_FLIGHT = 64  # deliveries sent at once, across endpoints
IDLE_SECONDS = 1.0


class DeliveryWorker:
    def __init__(self, pool: asyncpg.Pool, sender: Sender, *, schedule: logic.RetrySchedule,
                 disable_after: timedelta, on_disabled: Callable[[], None] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.pool = pool
        self.sender = sender
        self.schedule = schedule
        self.disable_after = disable_after
        self.on_disabled = on_disabled
        self.clock = clock
        self.lease_seconds = sender.timeout.total + 30 if sender.timeout.total else 60
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New deliveries were recorded: look now rather than at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        """Keep up to `IN_FLIGHT` deliveries going: a slow receiver holds only its own
        deliveries (one per model), never a round of everyone else's."""
        in_flight: set[asyncio.Task[None]] = set()
        backoff = 0.5
        try:
            while True:
                room = IN_FLIGHT - len(in_flight)
                claimed: list[store.Claimed] = []
                if room > 0:
                    self._wake.clear()
                    try:
                        claimed = await store.claim_due(self.pool, self.clock(), self.lease_seconds, room)
                        backoff = 0.5
                    except Exception as exc:
                        passing = is_retryable(exc)
                        log.log(logging.WARNING if passing else logging.ERROR, "claiming webhook deliveries failed: %s",
                                exc, exc_info=not passing)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 10.0)
                        continue
                for item in claimed:
                    task = asyncio.create_task(self._deliver_logged(item))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if claimed and len(claimed) == room:
                    continue  # more may be due: claim again once there is room
                # A delivery done makes room (its model's next one may be due); new rows wake it
                # only when there is room to take them.
                woken = asyncio.ensure_future(self._wake.wait()) if room > 0 else None
                try:
                    await asyncio.wait({*in_flight, *([woken] if woken else [])}, timeout=IDLE_SECONDS,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if woken is not None:
                        woken.cancel()
        finally:
            for task in in_flight:
                task.cancel()

    async def _deliver_logged(self, claimed: store.Claimed) -> None:
        try:
            await self._deliver(claimed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # its lease runs out and it is sent again: at least once
            passing = is_retryable(exc)
            log.log(logging.WARNING if passing else logging.ERROR, "webhook delivery %d: %s", claimed.id, exc,
                    exc_info=not passing)

    async def _deliver(self, claimed: store.Claimed) -> None:
        body = claimed.body.encode()
        headers = logic.signed_headers(claimed.format, claimed.secret, str(claimed.message_id), int(time.time()), body)
        outcome = await self.sender.post(claimed.url, body, headers)
        await self._record(claimed, outcome)

    async def _record(self, claimed: store.Claimed, outcome: Outcome) -> None:
        delivered = logic.succeeded(outcome.status)
        retry_at = None
        if not delivered and claimed.kind != "test":
            delay = logic.retry_delay(claimed.attempts + 1, self.schedule,
                                      logic.parse_retry_after(outcome.retry_after, outcome.attempted_at),
                                      jitter=random.random() * 0.999)
            retry_at = outcome.attempted_at + delay
        failing_since = await store.endpoint_failing_since(self.pool, claimed.endpoint_id)
        health = logic.after_attempt(delivered, failing_since, outcome.attempted_at, self.disable_after)
        reason = None
        if health.disable and claimed.kind != "test":
            reason = (f"every attempt failed since {health.failing_since:%Y-%m-%dT%H:%M:%SZ} "
                      f"(last: {outcome.error or outcome.status})")[:1000]
            retry_at = None
        attempt = store.Attempt(outcome.attempted_at, outcome.status, outcome.latency_ms, outcome.error,
                                outcome.excerpt)
        audit = [disabled_audit(claimed, reason)] if reason is not None else []
        await store.record_attempt(self.pool, claimed, attempt, delivered=delivered, retry_at=retry_at,
                                   endpoint_failing_since=health.failing_since, disable_reason=reason,
                                   on_disable=audit)
        if outcome.status is None or not delivered:
            log.info("webhook delivery %d to endpoint %s failed (attempt %d): %s%s", claimed.id, claimed.endpoint_id,
                     claimed.attempts + 1, outcome.error, f"; next at {retry_at:%H:%M:%S}" if retry_at else "")
        if reason is not None:
            log.warning("webhook endpoint %s disabled: %s", claimed.endpoint_id, reason)
            if self.on_disabled is not None:
                self.on_disabled()


def disabled_audit(claimed: store.Claimed, reason: str) -> OutboxRow:
    """The audit record of an endpoint switched off (about no model: `_unknown`)."""
    event = new_event(RegistryAudit, RegistryAuditData(
        action="webhook_disabled", name=UNKNOWN_MODEL, actor=f"modelreg/{store.SERVICE}", reason=reason,
        evidence={"endpoint_id": str(claimed.endpoint_id), "url": claimed.url}), source=f"modelreg/{store.SERVICE}")
    return OutboxRow.of(event, key=store.audit_key(claimed.endpoint_id))
