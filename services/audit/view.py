"""The registry view: the read tables the API serves, projected from audit records alone.

`project` is pure: it folds audit records (in seq order) into the current rows of the
versions and models they touch, and returns the rows to write. The audit writer runs it in the
transaction that appends the records; `modelreg replay` runs it over the whole topic into a
fresh schema. The same records always give the same tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from shared.events import (
    ArchivedEvidence,
    AuditEvidence,
    EvaluatedEvidence,
    IngestedEvidence,
    QuarantinedEvidence,
    RejectedEvidence,
    ValidatedEvidence,
    read_evidence,
)

from .chain import AuditRecord

VERSION_COLUMNS = ("name", "version", "stage", "status", "sha256", "size_bytes", "format", "artifact_uri",
                   "source_uri", "archive_uri", "run_id", "metrics", "params", "tags", "dataset", "signature",
                   "description", "registered_by", "correlation_id", "checks", "reasons", "created_at",
                   "updated_at", "last_seq")
MODEL_COLUMNS = ("name", "champion", "latest_version", "version_count", "champion_seq", "created_at",
                 "updated_at")
STAGE_COLUMNS = ("seq", "event_id", "name", "version", "from_stage", "to_stage", "reason", "actor", "evidence",
                 "at")
EVALUATION_COLUMNS = ("seq", "event_id", "name", "version", "suite", "environment", "metrics", "passed",
                      "evaluator", "dataset", "at")
JSON_COLUMNS = frozenset({"metrics", "params", "tags", "dataset", "signature", "checks", "reasons", "evidence"})

# A version's status only moves forward: a late `ingested` record never undoes `validated`.
_STATUS_RANK = {"registered": 0, "ingested": 1, "validated": 2, "rejected": 3, "quarantined": 3}
_METADATA = ("sha256", "size_bytes", "format", "artifact_uri", "source_uri", "run_id", "metrics", "params",
             "tags", "dataset", "signature", "description")


@dataclass
class Changes:
    versions: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_changes: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def keys_of(records: Iterable[tuple[int, AuditRecord]]) -> tuple[set[tuple[str, int]], set[str]]:
    versions = {(r.name, r.version) for _, r in records if r.version is not None}
    return versions, {name for name, _ in versions}


def project(records: Sequence[tuple[int, AuditRecord]], versions: dict[tuple[str, int], dict[str, Any]],
            models: dict[str, dict[str, Any]]) -> Changes:
    """Fold `(seq, record)` pairs, in seq order, into the given current rows."""
    changes = Changes(versions=versions, models=models)
    for seq, record in sorted(records, key=lambda pair: pair[0]):
        if record.version is None:
            continue
        _apply(changes, seq, record, record.version)
    return changes


def _version(changes: Changes, seq: int, record: AuditRecord, version: int) -> dict[str, Any]:
    key = (record.name, version)
    row = changes.versions.get(key)
    if row is None:
        row = {c: None for c in VERSION_COLUMNS}
        row.update(name=record.name, version=record.version, stage="none", status="registered", metrics={},
                   params={}, tags={}, checks=[], reasons=[], created_at=record.occurred_at,
                   correlation_id=record.correlation_id)
        changes.versions[key] = row
        model = _model(changes, record)
        model["version_count"] += 1
        model["latest_version"] = max(model["latest_version"], record.version or 0)
    row["updated_at"] = record.occurred_at
    row["last_seq"] = seq
    return row


def _model(changes: Changes, record: AuditRecord) -> dict[str, Any]:
    model = changes.models.get(record.name)
    if model is None:
        model = {"name": record.name, "champion": None, "latest_version": 0, "version_count": 0,
                 "champion_seq": 0, "created_at": record.occurred_at, "updated_at": record.occurred_at}
        changes.models[record.name] = model
    model["updated_at"] = record.occurred_at
    return model


def _status(row: dict[str, Any], status: str) -> None:
    if _STATUS_RANK[status] >= _STATUS_RANK.get(row["status"], 0):
        row["status"] = status


def _apply(changes: Changes, seq: int, record: AuditRecord, version: int) -> None:
    """`version`: the record's, known to be set. Each action's evidence is read as its type
    (shared.events.TYPED_EVIDENCE): a field renamed there is a type error here."""
    action = record.action
    if action not in ("ingested", "rejected", "validated", "quarantined", "evaluated", "promoted", "demoted",
                      "archived", "restored"):
        return  # held, refusals, approvals, dead letters: the audit log has them, the view needs none
    row = _version(changes, seq, record, version)
    match read_evidence(action, record.evidence):
        case IngestedEvidence() as ingested:
            for column, value in ingested.model_dump(include=set(_METADATA)).items():
                if value is not None:
                    row[column] = value
            row["registered_by"] = record.actor
            row["correlation_id"] = record.correlation_id
            _status(row, "ingested")
        case RejectedEvidence() as rejected:
            row["reasons"] = [*row["reasons"], {"code": rejected.code or _failed_check(rejected.checks),
                                                "message": record.reason or ""}]
            if rejected.checks is not None:
                row["checks"] = rejected.checks
            _status(row, "rejected")
        case ValidatedEvidence() as validated:
            row["checks"] = validated.checks
            _status(row, "validated")
        case QuarantinedEvidence():
            row["reasons"] = [*row["reasons"], {"code": "checksum_mismatch", "message": record.reason or ""}]
            _status(row, "quarantined")
        case EvaluatedEvidence() as evaluated:
            changes.evaluations.append({
                "seq": seq, "event_id": record.event_id, "name": record.name, "version": record.version,
                "suite": evaluated.suite, "environment": evaluated.environment, "metrics": evaluated.metrics,
                "passed": evaluated.passed, "evaluator": evaluated.evaluator, "dataset": evaluated.dataset,
                "at": record.occurred_at})
        case evidence:  # promoted, demoted, archived, restored: a stage change
            _stage_change(changes, seq, record, row, evidence)


def _stage_change(changes: Changes, seq: int, record: AuditRecord, row: dict[str, Any],
                  evidence: AuditEvidence | Mapping[str, Any]) -> None:
    action = record.action
    to_stage = record.to_stage or "archived"
    if action == "demoted" and to_stage == "archived":
        to_stage = "none"  # archived once archival has moved the artifact
    if isinstance(evidence, ArchivedEvidence):
        row["archive_uri"] = evidence.archive_uri
    elif action == "restored":
        row["archive_uri"] = None  # the artifact is back where it was
    from_stage = row["stage"]
    row["stage"] = to_stage
    changes.stage_changes.append({
        "seq": seq, "event_id": record.event_id, "name": record.name, "version": record.version,
        "from_stage": record.from_stage or from_stage,
        "to_stage": to_stage, "reason": record.reason, "actor": record.actor, "evidence": dict(record.evidence),
        "at": record.occurred_at})
    model = _model(changes, record)
    if to_stage == "production":
        model["champion"], model["champion_seq"] = record.version, seq
    elif model["champion"] == record.version:
        model["champion"], model["champion_seq"] = None, seq


def _failed_check(checks: list[dict[str, Any]] | None) -> str:
    failed = [c for c in checks or [] if isinstance(c, dict) and not c.get("passed")]
    return str(failed[0]["name"]) if failed else "rejected"


# ---------------------------------------------------------------------------- storage


async def load(conn: asyncpg.Connection, version_keys: set[tuple[str, int]],
               names: set[str]) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, dict[str, Any]]]:
    keys = sorted(version_keys)
    versions = {}
    if keys:
        rows = await conn.fetch(
            f"""SELECT {', '.join('v.' + c for c in VERSION_COLUMNS)} FROM view_versions v
                JOIN unnest($1::text[], $2::int[]) AS k(name, version) USING (name, version)
                FOR UPDATE OF v""", [k[0] for k in keys], [k[1] for k in keys])
        versions = {(r["name"], r["version"]): dict(r) for r in rows}
    models = {}
    if names:
        rows = await conn.fetch(
            f"SELECT {', '.join(MODEL_COLUMNS)} FROM view_models WHERE name = ANY($1::text[]) FOR UPDATE",
            sorted(names))
        models = {r["name"]: dict(r) for r in rows}
    return versions, models


async def save(conn: asyncpg.Connection, changes: Changes, *, versions: set[tuple[str, int]] | None = None,
               models: set[str] | None = None) -> None:
    """Write `changes`; with `versions`/`models`, only those rows (the rest are unchanged)."""
    version_rows = [row for key, row in changes.versions.items() if versions is None or key in versions]
    model_rows = [row for name, row in changes.models.items() if models is None or name in models]
    await _upsert(conn, "view_versions", VERSION_COLUMNS, ("name", "version"), version_rows)
    await _upsert(conn, "view_models", MODEL_COLUMNS, ("name",), model_rows)
    await _insert(conn, "view_stage_changes", STAGE_COLUMNS, changes.stage_changes)
    await _insert(conn, "view_evaluations", EVALUATION_COLUMNS, changes.evaluations)


_TYPES = {"version": "int", "size_bytes": "bigint", "last_seq": "bigint", "seq": "bigint", "champion": "int",
          "latest_version": "int", "version_count": "int", "champion_seq": "bigint", "correlation_id": "uuid",
          "created_at": "timestamptz", "updated_at": "timestamptz", "at": "timestamptz", "passed": "boolean",
          "event_id": "uuid"}


def _column_arrays(columns: Sequence[str], rows: list[dict[str, Any]]) -> tuple[list[list[Any]], str, str]:
    arrays, selects, params = [], [], []
    for index, column in enumerate(columns, start=1):
        values = [row[column] for row in rows]
        if column in JSON_COLUMNS:
            values = [None if v is None else orjson.dumps(v, default=str, option=orjson.OPT_SORT_KEYS).decode()
                      for v in values]
            params.append(f"${index}::text[]")
            selects.append(f"t.{column}::jsonb")
        else:
            params.append(f"${index}::{_TYPES.get(column, 'text')}[]")
            selects.append(f"t.{column}")
        arrays.append(values)
    return arrays, ", ".join(params), ", ".join(selects)


async def _upsert(conn: asyncpg.Connection, table: str, columns: Sequence[str], key: Sequence[str],
                  rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    arrays, params, selects = _column_arrays(columns, rows)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    await conn.execute(
        f"""INSERT INTO {table} ({', '.join(columns)})
            SELECT {selects} FROM unnest({params}) AS t({', '.join(columns)})
            ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}""", *arrays)


async def _insert(conn: asyncpg.Connection, table: str, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    arrays, params, selects = _column_arrays(columns, rows)
    await conn.execute(
        f"""INSERT INTO {table} ({', '.join(columns)})
            SELECT {selects} FROM unnest({params}) AS t({', '.join(columns)})
            ON CONFLICT DO NOTHING""", *arrays)


async def copy_rows(conn: asyncpg.Connection, table: str, columns: Sequence[str],
                    rows: list[dict[str, Any]]) -> None:
    """COPY rows into an empty table (a rebuild): the fastest way in, no conflicts to resolve."""
    if rows:
        await conn.copy_records_to_table(table, columns=list(columns),
                                         records=[tuple(row[c] for c in columns) for row in rows])


async def apply(conn: asyncpg.Connection, records: Sequence[tuple[int, AuditRecord]]) -> Changes:
    """Project `records` onto the view tables reachable through `conn`'s search_path."""
    version_keys, names = keys_of(records)
    versions, models = await load(conn, version_keys, names)
    changes = project(records, versions, models)
    await save(conn, changes)
    return changes
