"""archival: superseded, rejected and expired versions to cold storage -> `model.archived`.

Event-driven for supersession and manual requests; time-driven (a periodic sweep) for
rejected versions past their grace period and staging versions past their age. Several
instances may sweep: rows are taken `FOR UPDATE SKIP LOCKED`, so none is archived twice.

Deciding and moving are apart: a batch or the sweep records the decision in its transaction;
the artifact moves to cold storage after that commits, with no transaction open, and a second
transaction marks the version archived and emits model.archived (`finish_archives`). A restore
goes the same way back (`finish_restores`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.consumer import ServiceHandlers, Tx, unit_of_work
from shared.domain.retention import Kept, due_by_time, superseded_beyond_keep
from shared.events import (
    ArchivedEvidence,
    ModelArchived,
    ModelArchivedData,
    ModelDemoted,
    ModelIngested,
    ModelPromoted,
    ModelRejected,
    ModelRestored,
    ModelRestoredData,
    PromotionRequested,
)
from shared.policy import Retention
from shared.runtime import Resources, ServiceApp, every
from shared.settings import Settings

from .cold import move_from_cold, move_to_cold
from .logic import decide_restore

SERVICE = "archival"
log = logging.getLogger(__name__)

_KEPT = "version, stage, staged_at, superseded_at, rejected_at"
# How often decided archives are looked for when no batch or sweep announced one.
FINISH_POLL_SECONDS = 5.0


def _kept(row: asyncpg.Record) -> Kept:
    return Kept(row["version"], row["stage"], row["staged_at"], row["superseded_at"], row["rejected_at"])


async def _try_lock(conn: asyncpg.Connection, name: str) -> bool:
    locked: bool = await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtextextended('archival:' || $1, 0))", name)
    return locked


class Archival:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.policy = resources.policy
        # Set when an archive or a restore was decided: the artifact moves after the deciding transaction.
        self.moves_due = asyncio.Event()

    @contextlib.asynccontextmanager
    async def batch_scope(self, conn: asyncpg.Connection, events: list[Any]) -> AsyncIterator[None]:
        """A batch's models, locked in name order before any of their rows: the sweep only
        ever tries these locks, so the two never wait on each other in a circle."""
        await conn.execute(
            """SELECT pg_advisory_xact_lock(hashtextextended('archival:' || n, 0))
               FROM unnest($1::text[]) AS n ORDER BY n""", sorted({e.data.name for e in events}))
        yield

    async def on_ingested(self, tx: Tx, event: ModelIngested) -> None:
        data = event.data
        waiting = await tx.conn.fetchval(
            """INSERT INTO archival_versions (name, version, artifact_uri, correlation_id)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (name, version) DO UPDATE
               SET artifact_uri = EXCLUDED.artifact_uri, correlation_id = EXCLUDED.correlation_id
               RETURNING stage = 'archived' AND archived_at IS NULL""",
            data.name, data.version, data.artifact.uri, event.correlation)
        if waiting:  # an archive request overtook this event: its artifact can move now
            await self.archive(tx, data.name, data.version, "manual", restorable=True)

    async def _stage(self, tx: Tx, name: str, version: int, stage: str, at: datetime, *,
                     staged: bool = False, superseded: bool = False) -> None:
        """Record a stage change unless a later one is already recorded: the topics that carry
        them (model.promoted, model.demoted) are not ordered against each other."""
        await tx.conn.execute(
            """INSERT INTO archival_versions (name, version, stage, stage_event_time, staged_at, superseded_at,
                                              correlation_id)
               VALUES ($1, $2, $3, $4::timestamptz, CASE WHEN $5::boolean THEN $4::timestamptz END,
                       CASE WHEN $6::boolean THEN $4::timestamptz END, $7)
               ON CONFLICT (name, version) DO UPDATE
               SET stage = EXCLUDED.stage, stage_event_time = EXCLUDED.stage_event_time,
                   staged_at = COALESCE(EXCLUDED.staged_at, archival_versions.staged_at),
                   superseded_at = EXCLUDED.superseded_at, updated_at = now()
               WHERE archival_versions.archived_at IS NULL
                 AND (archival_versions.stage_event_time IS NULL
                      OR archival_versions.stage_event_time < EXCLUDED.stage_event_time)""",
            name, version, stage, at, staged, superseded, tx.cause.correlation if tx.cause else None)

    async def on_promoted(self, tx: Tx, event: ModelPromoted) -> None:
        data = event.data
        await self._stage(tx, data.name, data.version, data.to_stage, event.time,
                          staged=data.to_stage == "staging")

    async def on_demoted(self, tx: Tx, event: ModelDemoted) -> None:
        data = event.data
        superseded = data.reason == "superseded"
        # A requested archive is recorded as the stage (archived_at stays empty until the artifact
        # has moved), so one that overtakes the version's model.ingested is done when that arrives.
        requested = "archived" if data.to_stage == "archived" else "none"
        await self._stage(tx, data.name, data.version, requested, event.time, superseded=superseded)
        if data.to_stage == "archived":
            await self.archive(tx, data.name, data.version, "manual", restorable=True)
        elif superseded:
            await self._trim_superseded(tx, data.name)

    async def _trim_superseded(self, tx: Tx, name: str) -> int:
        """Archive the model's superseded versions beyond what its retention keeps; how many."""
        retention = self.policy.rule_for(name).retention
        rows = await tx.conn.fetch(
            f"SELECT {_KEPT} FROM archival_versions WHERE name = $1 AND archived_at IS NULL FOR UPDATE", name)
        decided = 0
        for item in superseded_beyond_keep([_kept(r) for r in rows], retention):
            decided += await self.archive(tx, name, item.version, item.reason, restorable=item.restorable)
        return decided

    async def on_rejected(self, tx: Tx, event: ModelRejected) -> None:
        data = event.data
        if data.version is None:
            return
        await tx.conn.execute(
            """INSERT INTO archival_versions (name, version, rejected_at, correlation_id)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (name, version) DO UPDATE
               SET rejected_at = COALESCE(archival_versions.rejected_at, EXCLUDED.rejected_at), updated_at = now()""",
            data.name, data.version, event.time, event.correlation)

    async def archive(self, tx: Tx, name: str, version: int, reason: str, *, restorable: bool) -> bool:
        """Decide to archive one version; False when there is nothing to do (yet). The artifact
        moves once this transaction has committed (`finish_archives`), never inside it."""
        row = await tx.conn.fetchrow(
            """SELECT stage, artifact_uri, archived_at, archive_requested_at FROM archival_versions
               WHERE name = $1 AND version = $2""",
            name, version)
        if row is None or row["archived_at"] is not None or row["archive_requested_at"] is not None:
            return False
        if row["artifact_uri"] is None and reason != "rejected":
            return False  # model.ingested is still on its way: archived once it is here (on_ingested, or the sweep)
        await tx.conn.execute(
            """UPDATE archival_versions SET archive_requested_at = now(), archive_reason = $3,
                      archive_restorable = $4, archive_from_stage = $5, updated_at = now()
               WHERE name = $1 AND version = $2""",
            name, version, reason, restorable, row["stage"] if row["stage"] != "archived" else "none")
        self.moves_due.set()
        return True

    async def finish_archives(self, limit: int = 100) -> int:
        """Move the artifacts of the versions whose archiving was decided, each outside any
        transaction, then mark each archived and emit model.archived in one; returns how many."""
        async with self.resources.pool.acquire() as conn:
            due = await conn.fetch(
                """SELECT name, version, artifact_uri FROM archival_versions
                   WHERE archive_requested_at IS NOT NULL AND archived_at IS NULL
                   ORDER BY archive_requested_at LIMIT $1""", limit)
        for item in due:
            # A version ingest refused never had an artifact stored: archived with nothing to move.
            uri = item["artifact_uri"]
            archive_uri = await move_to_cold(self.resources.store, uri) if uri else None
            async with unit_of_work(self.resources.pool, SERVICE) as tx:
                await self._record_archived(tx, item["name"], item["version"], archive_uri)
        return len(due)

    async def _record_archived(self, tx: Tx, name: str, version: int, archive_uri: str | None) -> None:
        conn = tx.conn
        row = await conn.fetchrow(
            """SELECT artifact_uri, correlation_id, archive_reason, archive_restorable, archive_from_stage
               FROM archival_versions
               WHERE name = $1 AND version = $2 AND archive_requested_at IS NOT NULL AND archived_at IS NULL
               FOR UPDATE""", name, version)
        if row is None:
            return  # another instance recorded it (its move found the artifact already moved)
        await conn.execute(
            """UPDATE archival_versions SET stage = 'archived', archived_at = now(), archive_uri = $3,
                      updated_at = now() WHERE name = $1 AND version = $2""", name, version, archive_uri)
        reason, from_stage = row["archive_reason"], row["archive_from_stage"]
        restorable = bool(row["archive_restorable"]) and archive_uri is not None
        correlation = row["correlation_id"]  # the archived version's life, whatever caused this
        tx.emit(ModelArchived, ModelArchivedData(name=name, version=version, from_stage=from_stage, reason=reason,
                                                 restorable=restorable), correlation=correlation)
        tx.audit("archived", name=name, version=version, from_stage=from_stage, to_stage="archived",
                 reason=reason, evidence=ArchivedEvidence(archive_uri=archive_uri, artifact_uri=row["artifact_uri"],
                                                          restorable=restorable), correlation=correlation)

    async def finish_moves_forever(self) -> None:
        """Finish decided archives and restores as soon as a batch or the sweep decides one, and
        every few seconds anyway (what a crash or an S3 outage left unfinished)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.moves_due.wait(), FINISH_POLL_SECONDS)
            self.moves_due.clear()
            try:
                while await self.finish_archives() + await self.finish_restores():
                    pass
            except Exception as exc:  # noqa: BLE001 - S3 or PostgreSQL away: the next turn retries
                log.warning("archival: moving artifacts failed, retried in %ss: %s", FINISH_POLL_SECONDS, exc)

    async def on_requested(self, tx: Tx, event: PromotionRequested) -> None:
        """An approver asks for an archived version back (stage `none`): once this transaction
        has committed, the artifact returns from cold storage and the version is movable again
        (`finish_restores`). Promotion leaves these requests to us, and decides every other one."""
        data = event.data
        if data.to_stage != "none":
            return
        row = await tx.conn.fetchrow(
            """SELECT artifact_uri, archive_uri, archived_at, rejected_at, correlation_id FROM archival_versions
               WHERE name = $1 AND version = $2 FOR UPDATE""", data.name, data.version)
        if row is None or row["archived_at"] is None:
            return  # not archived: a move down to none, promotion's
        correlation = row["correlation_id"]
        decision = decide_restore(self.policy.rule_for(data.name), actor=data.actor, archive_uri=row["archive_uri"],
                                  rejected=row["rejected_at"] is not None)
        evidence = {"requested_by": data.actor, "request_reason": data.reason, "archive_uri": row["archive_uri"],
                    "artifact_uri": row["artifact_uri"]}
        if not decision.restore:
            tx.audit("restore_refused", name=data.name, version=data.version, from_stage="archived",
                     to_stage="none", actor=data.actor, reason=decision.detail, evidence=evidence,
                     correlation=correlation)
            return
        # The artifact comes back once this transaction has committed (`finish_restores`).
        request = {"actor": data.actor, "reason": data.reason, "detail": decision.detail,
                   "time": event.time.isoformat(),
                   "evidence": {**evidence, **({"sent_by": tx.sender} if tx.sender else {})}}
        await tx.conn.execute(
            """UPDATE archival_versions SET restore_requested_at = now(), restore_request = $3::jsonb,
                      updated_at = now()
               WHERE name = $1 AND version = $2 AND restore_requested_at IS NULL""",
            data.name, data.version, request)
        self.moves_due.set()

    async def finish_restores(self, limit: int = 100) -> int:
        """Bring back the artifacts of approved restores, each outside any transaction, then make
        each version movable and emit model.restored in one; returns how many were handled."""
        async with self.resources.pool.acquire() as conn:
            due = await conn.fetch(
                """SELECT name, version, artifact_uri FROM archival_versions WHERE restore_requested_at IS NOT NULL
                   ORDER BY restore_requested_at LIMIT $1""", limit)
        for item in due:
            missing = None
            try:
                await move_from_cold(self.resources.store, item["artifact_uri"])
            except FileNotFoundError as exc:
                missing = str(exc)
            async with unit_of_work(self.resources.pool, SERVICE) as tx:
                await self._record_restored(tx, item["name"], item["version"], missing)
        return len(due)

    async def _record_restored(self, tx: Tx, name: str, version: int, missing: str | None) -> None:
        conn = tx.conn
        row = await conn.fetchrow(
            """SELECT artifact_uri, correlation_id, restore_request FROM archival_versions
               WHERE name = $1 AND version = $2 AND restore_requested_at IS NOT NULL FOR UPDATE""", name, version)
        if row is None:
            return  # another instance recorded it
        request = row["restore_request"]
        correlation = row["correlation_id"]
        if missing is not None:  # nothing to bring back: refused, and the version stays archived
            await conn.execute("""UPDATE archival_versions SET restore_requested_at = NULL, restore_request = NULL,
                                         updated_at = now() WHERE name = $1 AND version = $2""", name, version)
            tx.audit("restore_refused", name=name, version=version, from_stage="archived", to_stage="none",
                     actor=request["actor"], reason=missing, evidence=request["evidence"], correlation=correlation)
        else:
            await conn.execute(
                """UPDATE archival_versions SET stage = 'none', stage_event_time = $3, archived_at = NULL,
                          archive_uri = NULL, staged_at = NULL, superseded_at = NULL, archive_requested_at = NULL,
                          restore_requested_at = NULL, restore_request = NULL, updated_at = now()
                   WHERE name = $1 AND version = $2""", name, version, datetime.fromisoformat(request["time"]))
            tx.emit(ModelRestored, ModelRestoredData(name=name, version=version, artifact_uri=row["artifact_uri"],
                                                     actor=request["actor"], reason=request["reason"]),
                    correlation=correlation)
            tx.audit("restored", name=name, version=version, from_stage="archived", to_stage="none",
                     actor=request["actor"], reason=request["detail"], evidence=request["evidence"],
                     correlation=correlation)

    # -- the periodic sweep ------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        async def once() -> None:
            if archived := await self.sweep(datetime.now(UTC)):
                log.info("archival sweep: %d version(s) to archive", archived)

        await every(self.resources.settings.archival_sweep_seconds, once, "archival sweep")

    async def sweep(self, now: datetime, limit: int = 200) -> int:
        """Decide to archive what is due by time; returns how many (their artifacts move once
        this transaction has committed)."""
        retentions = [rule.retention for rule in self.policy.rules] + [Retention()]
        # Only rows that some rule could find due are read.
        grace = min(r.rejected_grace for r in retentions)
        max_age = min((r.staging_max_age for r in retentions if r.staging_max_age is not None),
                      default=None)
        async with unit_of_work(self.resources.pool, SERVICE) as work:
            conn = work.conn
            # Candidates by the loosest rule, read without locks; each model's own rule says which
            # are due. (Locking the oldest `limit` candidates and judging them afterwards starved a
            # short-lived rule's due versions behind as many not-yet-due ones of a longer rule.)
            candidates = await conn.fetch(
                f"""SELECT name, {_KEPT} FROM archival_versions
                    WHERE archived_at IS NULL
                      AND (rejected_at <= $1 OR (stage = 'staging' AND staged_at <= $2))""",
                now - grace, now - max_age if max_age is not None else datetime.min.replace(tzinfo=UTC))
            by_model: dict[str, list[Kept]] = {}
            for row in candidates:
                by_model.setdefault(row["name"], []).append(_kept(row))
            due = sorted(name for name, kept in by_model.items()
                         if due_by_time(kept, self.policy.rule_for(name).retention, now))
            archived = 0
            for name in due:
                if archived >= limit:
                    break  # the rest next sweep
                if not await _try_lock(conn, name):
                    continue  # a consumer is deciding about this model: next sweep
                # with the model's lock held, its rows as they are now (a batch may have moved them)
                model_rows = await conn.fetch(
                    f"""SELECT correlation_id, {_KEPT} FROM archival_versions
                        WHERE name = $1 AND archived_at IS NULL FOR UPDATE""", name)
                retention = self.policy.rule_for(name).retention
                correlations = {r["version"]: r["correlation_id"] for r in model_rows}
                for item in due_by_time([_kept(r) for r in model_rows], retention, now):
                    if await self.archive(work.about(correlations[item.version]), name, item.version,
                                          item.reason, restorable=item.restorable):
                        archived += 1
            # Supersessions whose archiving had to wait (the artifact's location arrived late).
            keep = min(r.keep_restorable for r in retentions)
            names = await conn.fetch(
                """SELECT DISTINCT name FROM (
                       SELECT name, row_number() OVER (PARTITION BY name ORDER BY superseded_at DESC) AS rank
                       FROM archival_versions
                       WHERE archived_at IS NULL AND stage = 'none' AND superseded_at IS NOT NULL) ranked
                   WHERE rank > $1 LIMIT 100""", keep)
            for row in names:
                if not await _try_lock(conn, row["name"]):
                    continue
                archived += await self._trim_superseded(work.about(None), row["name"])
        if archived:
            self.moves_due.set()
        return archived


def build(resources: Resources) -> ServiceHandlers:
    archival = Archival(resources)
    return ServiceHandlers(SERVICE, {
        "model.ingested": archival.on_ingested,
        "model.promoted": archival.on_promoted,
        "model.demoted": archival.on_demoted,
        "model.rejected": archival.on_rejected,
        "promotion.requested": archival.on_requested,
    }, background=(archival.sweep_forever, archival.finish_moves_forever), batch_scope=archival.batch_scope,
        # Nothing waits on archival record by record (a superseded version goes to cold
        # storage after the crown, not before): fuller batches, half its CPU at 50 versions/s.
        gather=True)


def create_app(settings: Settings) -> ServiceApp:
    return ServiceApp(settings, SERVICE, build)
