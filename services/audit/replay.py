"""`modelreg replay`: rebuild the registry view from the `registry.audit` topic alone, into a
fresh schema, and report every difference from the live tables, `audit_log` included.

The audit log is the source of truth; this proves it. Rows are matched by their natural keys
(model name; name and version; the audit event id of a stage change or evaluation) and every
column is compared except the live writer's audit sequence numbers. `audit_log` itself is
held to the topic record by record: a row no event on the topic accounts for, an event the
audit writer has consumed but the log lacks, or a row whose content differs from its event is
named, whatever its hashes say. Records on the topic that no key of the keyring may have signed
(MODELREG_KEYRING_FILE) are left out, as the consumers leave them out.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.broker import make_admin
from shared.db import connect
from shared.events import InvalidEvent, parse_event
from shared.kafka_security import reader_options
from shared.keys import load_keyring
from shared.settings import Settings

from . import store, view
from .authenticity import SignatureChecks
from .chain import FIELDS, AuditRecord, canonical

log = logging.getLogger(__name__)

CHUNK = 10_000
# (table, key columns, columns not compared: sequence numbers local to the writer that made them)
TABLES = (
    ("view_models", ("name",), {"champion_seq"}),
    ("view_versions", ("name", "version"), {"last_seq"}),
    ("view_stage_changes", ("event_id",), {"seq"}),
    ("view_evaluations", ("event_id",), {"seq"}),
)


@dataclass
class Difference:
    table: str
    key: tuple[Any, ...]
    kind: str  # "missing in live", "missing in replay", "differs"
    columns: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # column -> (live, replay)

    def __str__(self) -> str:
        key = ", ".join(str(k) for k in self.key)
        if self.kind != "differs":
            return f"{self.table} ({key}): {self.kind}"
        detail = "; ".join(f"{c}: live {live!r} != replay {replayed!r}" for c, (live, replayed) in self.columns.items())
        return f"{self.table} ({key}): {detail}"


@dataclass
class ReplayReport:
    schema: str
    events: int
    duplicates: int
    skipped: int
    seconds: float
    differences: list[Difference]
    forged: int = 0  # records no key of the keyring may have signed: left out

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class TopicEvent:
    """Where an audit event is on the topic, and a digest of the content its row must hold."""

    partition: int
    offset: int
    digest: bytes


def content_digest(record: AuditRecord) -> bytes:
    return hashlib.sha256(canonical(record)).digest()


async def replay(settings: Settings, *, from_offset: int | None = None, keep: bool = False,
                 progress: Progress | None = None) -> ReplayReport:
    conn = await connect(settings.dsn)
    schema = f"replay_{time.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:6]}"
    try:
        await _create_schema(conn, schema)
        keyring = load_keyring(settings.keyring_file) if settings.keyring_file else None
        if keyring is None:
            log.warning("MODELREG_KEYRING_FILE is not set: replay cannot tell forged audit records from real ones")
        # Every row up to here was written for an event already on the topic.
        head = await store.read_head(conn)
        logged_before = head.last_seq if head else 0
        started = time.perf_counter()
        consumed: dict[uuid.UUID, TopicEvent] = {}
        counts = {"forged": 0}
        # Hundreds of thousands of live objects make every cyclic collection walk them all;
        # the rebuild creates no cycles worth collecting.
        gc.disable()
        try:
            with SignatureChecks(keyring) if keyring is not None else nullcontext() as checks:
                events, duplicates, skipped = await _rebuild(conn, settings, schema, from_offset, progress,
                                                             consumed, checks, counts)
        finally:
            gc.enable()
        seconds = time.perf_counter() - started
        differences: list[Difference] = []
        if from_offset is None:
            differences = await compare(conn, "public", schema, consumed)
            differences += await compare_log(conn, settings, consumed, logged_before)
        return ReplayReport(schema, events, duplicates, skipped, seconds, differences, counts["forged"])
    finally:
        if not keep:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def _create_schema(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    for table, _, _ in TABLES:
        await conn.execute(f'CREATE TABLE "{schema}".{table} (LIKE public.{table} INCLUDING ALL)')


async def _rebuild(conn: asyncpg.Connection, settings: Settings, schema: str, from_offset: int | None,
                   progress: Progress | None, seen: dict[uuid.UUID, TopicEvent], checks: SignatureChecks | None,
                   counts: dict[str, int]) -> tuple[int, int, int]:
    topic = settings.topic("registry.audit")
    consumer = AIOKafkaConsumer(**reader_options(settings), enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
                                fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - a topic seen for the first time
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        for partition in partitions:
            consumer.seek(partition, max(starts[partition], from_offset or 0))
        total = sum(ends[p] - max(starts[p], from_offset or 0) for p in partitions)
        remaining = {p for p in partitions if ends[p] > max(starts[p], from_offset or 0)}
        pending: list[tuple[int, AuditRecord]] = []
        # The rebuilt state stays in memory (a fresh schema has nothing to read back), and
        # each chunk writes only the rows it touched.
        versions: dict[tuple[str, int], dict[str, Any]] = {}
        models: dict[str, dict[str, Any]] = {}
        done = events = duplicates = skipped = 0
        await conn.execute(f'SET search_path TO "{schema}"')
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=CHUNK)
            fetched = [(partition.partition, record) for partition, records in batches.items()
                       for record in records if record.offset < ends[partition]]
            done += len(fetched)
            # The signatures are checked elsewhere while this process reads the same records.
            values = [record.value for _, record in fetched]
            checking = checks.submit(values) if checks else None
            read = [_read(partition, record.offset, record.value) for partition, record in fetched]
            forged = await checks.outcome(checking, values) if checks and checking else [False] * len(read)
            for item, is_forged in zip(read, forged, strict=True):
                if item is None:
                    skipped += 1
                    continue
                audit_record, where = item
                if audit_record.event_id in seen:
                    duplicates += 1  # the outbox relay may publish a record twice
                    continue
                if is_forged:
                    counts["forged"] += 1  # the audit writer dead-letters these: so does the rebuild
                    continue
                if not where.digest:  # a record kept must have a canonical form: this raises why not
                    where = TopicEvent(where.partition, where.offset, content_digest(audit_record))
                seen[audit_record.event_id] = where
                events += 1
                pending.append((events, audit_record))
            # Done at the end offset, by position: the last offsets may be transaction markers,
            # which advance the position but are never handed over as records.
            for partition in list(remaining):
                if await consumer.position(partition) >= ends[partition]:
                    remaining.discard(partition)
            if len(pending) >= CHUNK or not remaining:
                # History rows are final once projected: copy them in now. Version and model
                # rows change until the end: they are copied in once, then.
                changes = view.project(pending, versions, models)
                await view.copy_rows(conn, "view_stage_changes", view.STAGE_COLUMNS, changes.stage_changes)
                await view.copy_rows(conn, "view_evaluations", view.EVALUATION_COLUMNS, changes.evaluations)
                pending = []
            if progress is not None:
                progress(done, total)
        await view.copy_rows(conn, "view_versions", view.VERSION_COLUMNS, list(versions.values()))
        await view.copy_rows(conn, "view_models", view.MODEL_COLUMNS, list(models.values()))
        return events, duplicates, skipped
    finally:
        await conn.execute("SET search_path TO public")
        await consumer.stop()


def _read(partition: int, offset: int, value: bytes | None) -> tuple[AuditRecord, TopicEvent] | None:
    """The audit record a message carries and where it is on the topic, with its content
    digest (empty when it has no canonical form); None if it is not a valid registry.audit
    event. Read before the record is known to be authentic and new: a forged or repeated
    record's content must not stop the replay."""
    try:
        event = parse_event("registry.audit", value)
    except InvalidEvent:
        return None
    record = AuditRecord.from_event(event)
    try:
        digest = content_digest(record)
    except (ValueError, TypeError, ArithmeticError):
        digest = b""
    return record, TopicEvent(partition, offset, digest)


async def newer_than(conn: asyncpg.Connection, live: str,
                     consumed: set[uuid.UUID] | dict[uuid.UUID, Any]) -> dict[str, set[Any]]:
    """Live rows that audit events the replay did not read have changed since (the writer
    keeps going while a replay runs): they are not compared. Keys per table."""
    later: dict[str, set[Any]] = {"view_stage_changes": set(), "view_evaluations": set(),
                                  "view_versions": set(), "view_models": set()}
    for table in ("view_stage_changes", "view_evaluations"):
        for r in await conn.fetch(f'SELECT event_id FROM "{live}".{table}'):
            if r["event_id"] not in consumed:
                later[table].add((r["event_id"],))
    for r in await conn.fetch(
            f"""SELECT v.name, v.version, a.event_id FROM "{live}".view_versions v
                LEFT JOIN "{live}".audit_log a ON a.seq = v.last_seq"""):
        if r["event_id"] not in consumed:
            later["view_versions"].add((r["name"], r["version"]))
            later["view_models"].add((r["name"],))
    for r in await conn.fetch(
            f"""SELECT m.name, a.event_id FROM "{live}".view_models m
                LEFT JOIN "{live}".audit_log a ON a.seq = m.champion_seq WHERE m.champion_seq > 0"""):
        if r["event_id"] not in consumed:
            later["view_models"].add((r["name"],))
    return later


async def compare(conn: asyncpg.Connection, live: str, rebuilt: str,
                  consumed: set[uuid.UUID] | dict[uuid.UUID, Any] | None = None) -> list[Difference]:
    """Every difference between the live tables and the rebuilt ones; with `consumed` (the
    audit events the rebuild read), rows the live writer changed after those are left out."""
    later = await newer_than(conn, live, consumed) if consumed is not None else {}
    differences = []
    for table, key, ignored in TABLES:
        skip = later.get(table, set())
        columns = [r["column_name"] for r in await conn.fetch(
            """SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2
               ORDER BY ordinal_position""", live, table) if r["column_name"] not in ignored]
        left = {tuple(r[k] for k in key): r for r in await conn.fetch(
            f'SELECT {", ".join(columns)} FROM "{live}".{table}')}
        right = {tuple(r[k] for k in key): r for r in await conn.fetch(
            f'SELECT {", ".join(columns)} FROM "{rebuilt}".{table}')}
        for row_key in sorted(left.keys() | right.keys(), key=str):
            if row_key in skip:
                continue
            if row_key not in right:
                differences.append(Difference(table, row_key, "missing in replay"))
            elif row_key not in left:
                differences.append(Difference(table, row_key, "missing in live"))
            else:
                changed = {c: (left[row_key][c], right[row_key][c]) for c in columns
                           if left[row_key][c] != right[row_key][c]}
                if changed:
                    differences.append(Difference(table, row_key, "differs", changed))
    return differences


async def committed_offsets(settings: Settings) -> dict[int, int]:
    """Per partition of registry.audit, how far the audit writer has committed (every event
    before that offset is in `audit_log`, or was refused)."""
    admin = make_admin(settings, "modelreg-replay")
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.group_id("audit"))
    finally:
        await admin.close()
    topic = settings.topic("registry.audit")
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def compare_log(conn: asyncpg.Connection, settings: Settings, consumed: dict[uuid.UUID, TopicEvent],
                      logged_before: int) -> list[Difference]:
    """`audit_log` held to the topic: rows up to seq `logged_before` that no event accounts
    for, events the writer has consumed that have no row, and rows whose content differs from
    their event (the columns named)."""
    committed = await committed_offsets(settings)  # before reading the log: all of these are in it
    differences: list[Difference] = []
    differing: list[tuple[Any, TopicEvent]] = []
    logged: set[uuid.UUID] = set()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in store.rows(conn):
            event = consumed.get(row.event_id)
            if event is None:
                if row.seq <= logged_before:
                    differences.append(Difference("audit_log", (row.event_id,), "missing in replay",
                                                  {"seq": (row.seq, None)}))
                continue
            logged.add(row.event_id)
            if content_digest(row.record) != event.digest:
                differing.append((row, event))
    for event_id, event in consumed.items():
        if event_id not in logged and event.offset < committed.get(event.partition, 0):
            differences.append(Difference("audit_log", (event_id,), "missing in live",
                                          {"offset": (None, f"{event.partition}:{event.offset}")}))
    if differing:
        differences += await _column_differences(settings, differing)
    return differences


async def _column_differences(settings: Settings, differing: list[tuple[Any, TopicEvent]]) -> list[Difference]:
    """Which fields of each differing row disagree with its event, read again from the topic."""
    topic = settings.topic("registry.audit")
    consumer = AIOKafkaConsumer(**reader_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        differences = []
        for row, where in differing:
            partition = TopicPartition(topic, where.partition)
            consumer.assign([partition])
            consumer.seek(partition, where.offset)
            record = await consumer.getone(partition)
            replayed = AuditRecord.from_event(parse_event("registry.audit", record.value))
            columns = {name: (getattr(row.record, name), getattr(replayed, name)) for name in FIELDS
                       if canonical_field(row.record, name) != canonical_field(replayed, name)}
            differences.append(Difference("audit_log", (row.event_id,), "differs",
                                          columns or {"content": ("?", "?")}))
        return differences
    finally:
        await consumer.stop()


def canonical_field(record: AuditRecord, name: str) -> bytes:
    """One field as the chain hashes it (so 2 and 2.0 in evidence compare equal)."""
    return canonical({**{f: None for f in FIELDS}, "event_id": record.event_id,
                      "occurred_at": record.occurred_at, name: getattr(record, name)})
