"""promotion's tables for one batch of events: read set-based when the batch starts, changed
in memory by the handlers, written set-based when it ends, all in the batch's transaction.

Per-event SQL cost ten round trips a version, and round trips are what a loaded two-core
machine has least of. A batch now costs about a dozen statements, whatever its size. The
models of the batch are locked first (in name order, so instances never deadlock), so no
other instance decides about them until the batch commits.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.domain.promotion import Result
from shared.domain.registered_model import (
    IntegrityVerdict,
    PendingImport,
    RegisteredModel,
    Version,
    is_rollback_target,
)
from shared.events import CloudEvent
from shared.policy import Rule

from .early import HeldRow
from .store import VersionRow

_ROW = tuple(VersionRow.__dataclass_fields__)
# An import request waiting for validation is kept as an approval row whose stage carries this
# prefix, so it never counts as an approval of a manual request for that stage.
_IMPORT_PREFIX = "import:"
_STAGES = ("none", "staging", "production", "archived")


@dataclasses.dataclass
class _Version:
    """A promotion_versions row, as the batch changes it."""

    row: VersionRow
    superseded_at: datetime | None
    traceparent: str | None
    stage_changed_at: datetime | None
    new: bool = False
    manifest: str | None = None  # a directory artifact's canonical manifest (written when new)


def _rollback_target(version: _Version) -> bool:
    return is_rollback_target(version.row.stage, version.superseded_at, version.row.blocked)


# Superseded versions loaded per model as rollback targets, besides each champion's predecessor:
# a batch that rolls one model back more often than this finds no older one to restore.
RECENT_ROLLBACK_TARGETS = 8


class PromotionBatch:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._versions: dict[tuple[str, int], _Version] = {}
        self._numbers: dict[str, list[int]] = {}  # each model's loaded versions
        self._dirty: set[tuple[str, int]] = set()
        self._results: dict[tuple[str, int], list[Result]] = {}
        self._new_evaluations: list[tuple[Any, ...]] = []
        self._approvals: dict[tuple[str, int, str], set[str]] = {}
        self._new_approvals: list[tuple[Any, ...]] = []
        self._cleared_approvals: set[tuple[str, int, str]] = set()
        self._imports: dict[tuple[str, int], PendingImport] = {}
        self._history: list[tuple[Any, ...]] = []
        self._waiting: dict[tuple[str, int], list[asyncpg.Record]] = {}
        self._holds: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._events: Sequence[CloudEvent[Any]] = ()

    # -- loading ------------------------------------------------------------------------

    async def load(self, events: Sequence[CloudEvent[Any]]) -> None:
        self._events = events
        names = sorted({e.data.name for e in events})
        keys = sorted({(e.data.name, e.data.version) for e in events if getattr(e.data, "version", None)})
        # Versions this batch brings: events may have been held until they came.
        arriving = sorted({(e.data.name, e.data.version) for e in events if e.topic == "model.ingested"})
        await self.conn.execute(
            """SELECT pg_advisory_xact_lock(hashtextextended('promotion:' || n, 0))
               FROM unnest($1::text[]) AS n ORDER BY n""", names)
        columns = f"{', '.join('v.' + c for c in _ROW)}, v.superseded_at, v.traceparent, v.stage_changed_at"
        # A union, not an OR that would read the whole table: the batch's versions, its models'
        # champions, and the rollback targets `choose_restore` may pick: each champion's
        # predecessor, and the most recently superseded (a few, for rollbacks in a row within
        # the batch). Not every superseded version: a model's history would be read (and its
        # results after it) by every batch about it, growing with each champion it ever had.
        # Each loaded version comes with its QA results and its pending import, if any, in the
        # same round trip (a batch's statements each wait on a busy machine's scheduler).
        rows = await self.conn.fetch(
            f"""WITH loaded AS (
                    SELECT {columns} FROM promotion_versions v
                        JOIN unnest($1::text[], $2::int[]) AS k(name, version) USING (name, version)
                    UNION
                    SELECT {columns} FROM promotion_versions v
                    WHERE v.name = ANY($3::text[]) AND v.stage = 'production'
                    UNION
                    SELECT {columns} FROM promotion_versions c
                        JOIN promotion_versions v ON v.name = c.name AND v.version = c.previous_champion
                    WHERE c.name = ANY($3::text[]) AND c.stage = 'production'
                    UNION
                    SELECT r.* FROM unnest($3::text[]) AS m(name) CROSS JOIN LATERAL (
                        SELECT {columns} FROM promotion_versions v
                        WHERE v.name = m.name AND v.stage = 'none' AND v.superseded_at IS NOT NULL
                          AND v.blocked IS NULL
                        ORDER BY v.superseded_at DESC LIMIT {RECENT_ROLLBACK_TARGETS}) AS r)
                SELECT loaded.*,
                       (SELECT json_agg(json_build_object(
                                   'id', e.id, 'suite', e.suite, 'environment', e.environment, 'metrics', e.metrics,
                                   'passed', e.passed, 'evaluator', e.evaluator) ORDER BY e.id)
                        FROM evaluations e
                        WHERE e.name = loaded.name AND e.version = loaded.version) AS results,
                       (SELECT json_build_object('to_stage', a.to_stage, 'actor', a.actor, 'reason', a.reason,
                                                 'event_id', a.event_id)
                        FROM approvals a
                        WHERE a.name = loaded.name AND a.version = loaded.version AND a.to_stage LIKE 'import:%'
                        LIMIT 1) AS pending_import,
                       -- Whether events wait for a version this batch brings (rarely: then
                       -- they are taken below); a row even when nothing was loaded.
                       EXISTS (SELECT 1 FROM promotion_deferred d
                               WHERE (d.name, d.version) IN (SELECT * FROM unnest($4::text[], $5::int[])))
                           AS waiting
                FROM (VALUES (true)) AS always(x) LEFT JOIN loaded ON true""",
            *names_and_versions(keys), names, *names_and_versions(arriving))
        top = 0
        for r in rows:
            if r["name"] is None:  # the row of an empty load
                continue
            key = (r["name"], r["version"])
            self._numbers.setdefault(key[0], []).append(key[1])
            self._versions[key] = _Version(
                VersionRow(**{f: r[f] for f in _ROW}), r["superseded_at"], r["traceparent"], r["stage_changed_at"])
            for e in r["results"] or ():
                self._results.setdefault(key, []).append(
                    Result(e["suite"], e["environment"], e["metrics"], e["passed"], e["id"], e["evaluator"]))
                top = max(top, e["id"])
            if (pending := r["pending_import"]) is not None:
                stored = json.loads(pending["reason"])
                self._imports[key] = PendingImport(
                    pending["to_stage"].removeprefix(_IMPORT_PREFIX), pending["actor"], stored["reason"],
                    stored["imported_from"], uuid.UUID(pending["event_id"]))
        self._seq = itertools.count(top + 1)  # results added in this batch sort after the stored ones
        requested = sorted({(e.data.name, e.data.version) for e in events if e.topic == "promotion.requested"})
        if requested:
            for r in await self.conn.fetch(
                    """SELECT name, version, to_stage, actor FROM approvals
                       WHERE (name, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))""",
                    *names_and_versions(requested)):
                self._approvals.setdefault((r["name"], r["version"], r["to_stage"]), set()).add(r["actor"])
        if rows[0]["waiting"]:
            for r in await self.conn.fetch(
                    """DELETE FROM promotion_deferred
                       WHERE (name, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))
                       RETURNING event_id, topic, name, version, partition, "offset", payload, first_seen""",
                    *names_and_versions(arriving)):
                self._waiting.setdefault((r["name"], r["version"]), []).append(r)

    # -- what the handlers ask and change ---------------------------------------------------

    @property
    def events(self) -> Sequence[CloudEvent[Any]]:
        """The batch's events (as loaded for)."""
        return self._events

    def get(self, name: str, version: int) -> VersionRow | None:
        found = self._versions.get((name, version))
        return found.row if found else None

    def may_crown(self) -> list[VersionRow]:
        """The versions this batch may move to production, as far as loading tells: those in
        staging, those an approver asks to crown, and the loaded rollback targets of a model
        whose production metrics arrived (all of them: a restore that finds one altered tries
        the next). (One found later, e.g. a version the batch also introduces, costs the batch
        another round of checks, not a wrong decision.)"""
        keys = {key for key, v in self._versions.items() if v.row.stage == "staging"}
        for event in self._events:
            if event.topic == "promotion.requested" and event.data.to_stage == "production":
                keys.add((event.data.name, event.data.version))
            elif event.topic == "metrics.evaluated" and event.data.environment == "production":
                name = event.data.name
                keys.update((name, number) for number in self._numbers.get(name, ())
                            if _rollback_target(self._versions[(name, number)]))
        return [self._versions[key].row for key in keys
                if key in self._versions and self._versions[key].row.blocked is None]

    def traceparent(self, name: str, version: int) -> str | None:
        found = self._versions.get((name, version))
        return found.traceparent if found else None

    def add_version(self, *, name: str, version: int, sha256: str, artifact_uri: str, registered_by: str | None,
                    correlation_id: uuid.UUID, traceparent: str | None,
                    manifest: str | None = None) -> list[HeldRow]:
        """Record a version (unless known) and hand back the events that waited for it."""
        key = (name, version)
        if key not in self._versions:
            self._numbers.setdefault(name, []).append(version)
            self._versions[key] = _Version(
                VersionRow(name=name, version=version, stage="none", sha256=sha256, artifact_uri=artifact_uri,
                           registered_by=registered_by, correlation_id=correlation_id, validated=False,
                           blocked=None, previous_champion=None), None, traceparent, None, new=True,
                manifest=manifest)
            self._dirty.add(key)
        # Events held earlier in this very batch wait in memory, not yet in the table.
        held_here = [h for h in self._holds if (h[2], h[3]) == key]
        self._holds = [h for h in self._holds if (h[2], h[3]) != key]
        waited = sorted(self._waiting.pop(key, []), key=lambda r: (r["first_seen"], r["offset"] or 0))
        now = datetime.now(UTC)
        return [*waited, *({"event_id": h[0], "topic": h[1], "name": h[2], "version": h[3], "partition": h[4],
                            "offset": h[5], "payload": h[6], "first_seen": now} for h in held_here)]

    async def manifest(self, name: str, version: int) -> str | None:
        """A directory artifact's canonical manifest (None for a single file); read only when
        the integrity check needs it, so batches do not carry manifests they never look at."""
        found = self._versions.get((name, version))
        if found is not None and found.new:
            return found.manifest
        manifest: str | None = await self.conn.fetchval(
            "SELECT manifest FROM promotion_versions WHERE name = $1 AND version = $2", name, version)
        return manifest

    def update(self, name: str, version: int, **fields: Any) -> VersionRow | None:
        found = self._versions.get((name, version))
        if found is None:
            return None
        for column in ("superseded_at", "traceparent"):
            if column in fields:
                setattr(found, column, fields.pop(column))
        found.row = dataclasses.replace(found.row, **fields)
        self._dirty.add((name, version))
        return found.row

    def set_stage(self, row: VersionRow, to_stage: str, *, reason: str, actor: str, event_id: uuid.UUID,
                  evidence: dict[str, Any], at: datetime, **fields: Any) -> VersionRow:
        current = self._versions[(row.name, row.version)]
        current.stage_changed_at = at
        self._history.append((row.name, row.version, current.row.stage, to_stage, reason, actor, event_id,
                              row.correlation_id, json.dumps(evidence, default=str), at))
        moved = self.update(row.name, row.version, stage=to_stage, **fields)
        assert moved is not None
        return moved

    def add_evaluation(self, *, event_id: uuid.UUID, name: str, version: int, suite: str, environment: str,
                       metrics: dict[str, float], passed: bool | None, dataset: dict[str, Any] | None,
                       evaluator: str | None, evaluated_at: datetime) -> Result:
        result = Result(suite, environment, metrics, passed, next(self._seq), evaluator)
        self._results.setdefault((name, version), []).append(result)
        self._new_evaluations.append((event_id, name, version, suite, environment, json.dumps(metrics), passed,
                                      json.dumps(dataset) if dataset is not None else None, evaluator,
                                      evaluated_at))
        return result

    def model(self, name: str, number: int, rule: Rule, revision: str,
              verdicts: Callable[[int], IntegrityVerdict | None]) -> RegisteredModel:
        """The model as a decision about its version `number` sees it: that version, the
        champion and the rollback targets the batch loaded, with their results, votes and
        waiting imports. (Only those: a command touches no other version, and a batch about
        many versions of one model builds a model per event.)"""
        return RegisteredModel(name, rule, revision, self._domain_versions(name, number), verdicts)

    def _domain_versions(self, name: str, number: int | None = None) -> list[Version]:
        versions = []
        for loaded in self._numbers.get(name, ()):
            key = (name, loaded)
            found = self._versions[key]
            row = found.row
            if loaded != number and row.stage != "production" and not _rollback_target(found):
                continue
            versions.append(Version(
                loaded, row.stage, row.validated, row.blocked, row.registered_by, row.previous_champion,
                superseded=int(found.superseded_at.timestamp() * 1e6) if found.superseded_at is not None else None,
                results=self._results.get(key, []),
                approvals={stage: frozenset(self._approvals[(name, loaded, stage)]) for stage in _STAGES
                           if (name, loaded, stage) in self._approvals},
                pending_import=self._imports.get(key)))
        return versions

    def approvals(self, name: str, version: int, to_stage: str) -> set[str]:
        return set(self._approvals.get((name, version, to_stage), ()))

    def add_approval(self, *, name: str, version: int, to_stage: str, actor: str, reason: str,
                     event_id: uuid.UUID) -> None:
        approvers = self._approvals.setdefault((name, version, to_stage), set())
        if actor not in approvers:
            approvers.add(actor)
            self._new_approvals.append((name, version, to_stage, actor, reason, event_id))

    def clear_approvals(self, name: str, version: int, to_stage: str) -> None:
        self._approvals.pop((name, version, to_stage), None)
        self._new_approvals = [a for a in self._new_approvals if a[:3] != (name, version, to_stage)]
        self._cleared_approvals.add((name, version, to_stage))

    def set_pending_import(self, name: str, version: int, pending: PendingImport) -> None:
        """Keep one import request per version: the newest replaces any earlier one."""
        self.clear_pending_import(name, version)
        self._imports[(name, version)] = pending
        self.add_approval(name=name, version=version, to_stage=_IMPORT_PREFIX + pending.to_stage,
                          actor=pending.actor, event_id=pending.event_id,
                          reason=json.dumps({"reason": pending.reason, "imported_from": pending.imported_from}))

    def clear_pending_import(self, name: str, version: int) -> None:
        earlier = self._imports.pop((name, version), None)
        if earlier is not None:
            self.clear_approvals(name, version, _IMPORT_PREFIX + earlier.to_stage)

    def hold(self, *, event_id: uuid.UUID, topic: str, name: str, version: int, partition: int, offset: int,
             payload: bytes) -> None:
        self._holds.append((event_id, topic, name, version, partition, offset, payload))

    # -- writing ----------------------------------------------------------------------------

    async def flush(self) -> None:
        conn = self.conn
        changed = [self._versions[k] for k in sorted(self._dirty)]
        # Rows leaving production first: the one-champion index is checked row by row.
        upserts = [_version_columns(batch) for batch in ([v for v in changed if v.row.stage != "production"],
                                                         [v for v in changed if v.row.stage == "production"])
                   if batch]
        # The three appends touch three tables, in no order: they ride along with the last
        # upsert (or go alone), one round trip fewer in a batch whose statements each wait.
        appends = ([*_columns(self._history, 10), *_columns(self._new_evaluations, 10), *_columns(self._holds, 7)]
                   if self._history or self._new_evaluations or self._holds else None)
        for i, columns in enumerate(upserts):
            if appends is not None and i == len(upserts) - 1:
                await conn.execute(_APPENDS_THEN_UPSERT, *appends, *columns)
            else:
                await conn.execute(_UPSERT, *columns)
        if appends is not None and not upserts:
            await conn.execute(_APPENDS_ALONE, *appends)
        if self._cleared_approvals:
            cleared = sorted(self._cleared_approvals)
            await conn.execute(
                """DELETE FROM approvals WHERE (name, version, to_stage) IN
                   (SELECT * FROM unnest($1::text[], $2::int[], $3::text[]))""", *_columns(cleared, 3))
        if self._new_approvals:
            await conn.execute(
                """INSERT INTO approvals (name, version, to_stage, actor, reason, event_id)
                   SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::uuid[])
                   ON CONFLICT DO NOTHING""", *_columns(self._new_approvals, 6))


# Data-modifying CTEs, run to completion whatever the statement they lead does ($1-$27).
_APPENDS = """
    history AS (
        INSERT INTO stage_history (name, version, from_stage, to_stage, reason, actor, event_id, correlation_id,
                                   evidence, changed_at)
        SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::uuid[],
                             $8::uuid[], $9::text[]::jsonb[], $10::timestamptz[])
    ), evaluations AS (
        INSERT INTO evaluations (event_id, name, version, suite, environment, metrics, passed, dataset, evaluator,
                                 evaluated_at)
        SELECT * FROM unnest($11::uuid[], $12::text[], $13::int[], $14::text[], $15::text[], $16::text[]::jsonb[],
                             $17::boolean[], $18::text[]::jsonb[], $19::text[], $20::timestamptz[])
        ON CONFLICT (event_id) DO NOTHING
    ), held AS (
        INSERT INTO promotion_deferred (event_id, topic, name, version, partition, "offset", payload)
        SELECT * FROM unnest($21::uuid[], $22::text[], $23::text[], $24::int[], $25::int[], $26::bigint[],
                             $27::bytea[])
        ON CONFLICT (event_id) DO NOTHING
    )"""

_UPSERT_TYPES = ("text", "int", "text", "text", "text", "text", "uuid", "boolean", "text", "timestamptz", "int",
                 "text", "timestamptz", "text")


def _upsert(*, first: int) -> str:
    """The upsert of promotion_versions rows (`_version_columns`), its parameters from `$first`."""
    arrays = ", ".join(f"${first + i}::{kind}[]" for i, kind in enumerate(_UPSERT_TYPES))
    return f"""INSERT INTO promotion_versions (name, version, stage, sha256, artifact_uri, registered_by,
                                               correlation_id, validated, blocked, superseded_at, previous_champion,
                                               traceparent, stage_changed_at, manifest)
               SELECT * FROM unnest({arrays})
               ON CONFLICT (name, version) DO UPDATE
               SET stage = EXCLUDED.stage, validated = EXCLUDED.validated, blocked = EXCLUDED.blocked,
                   superseded_at = EXCLUDED.superseded_at, previous_champion = EXCLUDED.previous_champion,
                   stage_changed_at = EXCLUDED.stage_changed_at"""


_UPSERT = _upsert(first=1)
_APPENDS_THEN_UPSERT = f"WITH {_APPENDS} {_upsert(first=28)}"
_APPENDS_ALONE = f"WITH {_APPENDS} SELECT"


def names_and_versions(keys: Iterable[tuple[str, int]]) -> tuple[list[str], list[int]]:
    """(name, version) pairs as the two arrays a statement unnests."""
    keys = list(keys)
    return [name for name, _ in keys], [version for _, version in keys]


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    rows = list(rows)
    return [[row[i] for row in rows] for i in range(width)]


def _version_columns(versions: list[_Version]) -> list[list[Any]]:
    rows = [(v.row.name, v.row.version, v.row.stage, v.row.sha256, v.row.artifact_uri, v.row.registered_by,
             v.row.correlation_id, v.row.validated, v.row.blocked, v.superseded_at, v.row.previous_champion,
             v.traceparent, v.stage_changed_at or datetime.now(UTC), v.manifest) for v in versions]
    return _columns(rows, len(_UPSERT_TYPES))
