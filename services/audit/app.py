"""audit: `registry.audit` -> one row per record in the hash-chained, append-only `audit_log`,
and signed checkpoints of the chain head (checkpointer.py) every N records or T seconds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import asyncpg

from shared import signing
from shared.consumer import ServiceHandlers
from shared.events import CloudEvent
from shared.keys import SigningKey
from shared.runtime import Resources, ServiceApp, every
from shared.settings import Settings

from . import dlq, store, view
from .chain import AuditRecord
from .checkpointer import Checkpointer, CheckpointObjects

SERVICE = "audit"
log = logging.getLogger(__name__)


async def on_audit_batch(conn: asyncpg.Connection, events: list[CloudEvent[Any]]) -> None:
    """All of a batch's fresh audit records, appended set-based in the batch's transaction,
    and projected onto the registry view in the same transaction."""
    rows = await store.append(conn, [AuditRecord.from_event(e) for e in events])
    await view.apply(conn, [(row.seq, row.record) for row in rows])


def checkpoint_key(configured: Path | None) -> SigningKey | None:
    """The audit writer's key (MODELREG_SIGNING_KEY_FILE: the file, or a directory holding
    audit.ed25519.pem), or None when none is configured."""
    return None if configured is None else signing.service_key(configured, SERVICE)


def build(resources: Resources) -> ServiceHandlers:
    settings = resources.settings
    background: tuple[Any, ...] = ()
    key = checkpoint_key(settings.signing_key_file)
    if key is None:
        log.warning("MODELREG_SIGNING_KEY_FILE is not set: the audit writer signs no checkpoints, "
                    "so `modelreg audit verify` can only check the chain against itself")
    else:
        checkpointer = Checkpointer(resources.pool, CheckpointObjects(resources.store), key,
                                    every_records=settings.audit_checkpoint_records,
                                    every_seconds=settings.audit_checkpoint_seconds)
        background = (lambda: every(checkpointer.poll_seconds, checkpointer.tick, "audit checkpoint"),)
    return ServiceHandlers(SERVICE, batch_handlers={"registry.audit": on_audit_batch}, background=background)


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, dlq.serving_dead_letters(build))  # + registry.dlq, redrives
