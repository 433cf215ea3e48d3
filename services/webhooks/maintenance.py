"""The webhooks service's periodic chores, beside consuming and delivering.

- Auditing endpoint changes: the CLI and the API record each endpoint created or deleted
  (store.create_endpoint, store.delete_endpoint) but hold no signing key; this service turns
  each into a signed `registry.audit` record through its outbox (the audit writer alone writes
  audit_log), about no model (`_unknown`), with the person or token as the actor.
- Pruning the delivery log: finished deliveries and their attempts older than
  MODELREG_WEBHOOKS_KEEP_DAYS, in batches (store.prune_deliveries).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.events import UNKNOWN_MODEL, RegistryAudit, RegistryAuditData, new_event
from shared.outbox import OutboxRow
from shared.webhooks import store

log = logging.getLogger(__name__)

AUDIT_POLL_SECONDS = 1.0  # how soon an endpoint change reaches the audit log
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 1000  # deliveries deleted per transaction


def change_audit(change: store.EndpointChange) -> RegistryAuditData:
    """The audit record of an endpoint created or deleted (its evidence: what the endpoint was
    subscribed to and where it pointed; the secret never leaves its table)."""
    verb = "created" if change.action == "webhook_created" else "deleted"
    evidence = {"endpoint_id": str(change.endpoint_id), "changed_at": change.changed_at.isoformat(),
                **{key: value for key, value in change.evidence.items() if key != "secret"}}
    return RegistryAuditData(action=change.action, name=UNKNOWN_MODEL, actor=change.actor[:256],
                             reason=f"webhook endpoint {change.endpoint_id} {verb} by {change.actor}"[:10_000],
                             evidence=evidence)


def change_row(change: store.EndpointChange) -> OutboxRow:
    """The outbox row of an endpoint change's audit record, keyed by its endpoint."""
    event = new_event(RegistryAudit, change_audit(change), source=f"modelreg/{store.SERVICE}")
    return OutboxRow.of(event, key=store.audit_key(change.endpoint_id))


def prune_before(now: datetime, keep: timedelta) -> datetime:
    """Deliveries that finished before this moment are pruned."""
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone (finished_at is timestamptz)")
    if keep <= timedelta(0):
        raise ValueError("keep must be positive")
    return now - keep


class Maintenance:
    def __init__(self, pool: asyncpg.Pool, *, keep: timedelta, batch: int = PRUNE_BATCH,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.pool = pool
        self.keep = keep
        self.batch = batch
        self.clock = clock

    async def audit_changes(self) -> int:
        done = await store.audit_endpoint_changes(self.pool, change_row)
        if done:
            log.info("audited %d webhook endpoint change(s)", done)
        return done

    async def prune(self) -> int:
        before = prune_before(self.clock(), self.keep)
        pruned = await store.prune_deliveries(self.pool, before, batch=self.batch)
        if pruned:
            log.info("pruned %d webhook deliveries finished before %s", pruned, before.isoformat())
        return pruned
