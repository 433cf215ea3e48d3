"""audit: `registry.audit` -> one row per record in the hash-chained, append-only `audit_log`."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.consumer import ServiceHandlers
from shared.events import CloudEvent
from shared.runtime import Resources, ServiceApp
from shared.settings import Settings

from . import store, view
from .chain import AuditRecord

SERVICE = "audit"


async def on_audit_batch(conn: asyncpg.Connection, events: list[CloudEvent[Any]]) -> None:
    """All of a batch's fresh audit records, appended set-based in the batch's transaction,
    and projected onto the registry view in the same transaction."""
    rows = await store.append(conn, [AuditRecord.from_event(e) for e in events])
    await view.apply(conn, [(row.seq, row.record) for row in rows])


def build(resources: Resources) -> ServiceHandlers:
    return ServiceHandlers(SERVICE, batch_handlers={"registry.audit": on_audit_batch})


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, build)
