"""modelreg's vocabulary in MLflow's words, and back: stages, registration status, and the JSON
of MLflow's RegisteredModel and ModelVersion messages. Pure: rows in, dicts out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# modelreg stage -> MLflow stage name (MLflow's own spelling, as its UI and client print it)
STAGE_TO_MLFLOW = {"none": "None", "staging": "Staging", "production": "Production", "archived": "Archived"}
_MLFLOW_TO_STAGE = {v.lower(): k for k, v in STAGE_TO_MLFLOW.items()}

PENDING, READY, FAILED = "PENDING_REGISTRATION", "READY", "FAILED_REGISTRATION"
# The label holding the MLflow logged model a version was registered from (models:/m-ID);
# ModelVersion.model_id is read from it.
MODEL_ID_TAG = "mlflow.model_id"


def stage_from_mlflow(stage: str) -> str:
    """MLflow's stage name (any case) as a modelreg stage; ValueError names the choices."""
    try:
        return _MLFLOW_TO_STAGE[stage.strip().lower()]
    except KeyError:
        raise ValueError(f"stage {stage[:40]!r}: choose one of {', '.join(STAGE_TO_MLFLOW.values())}") from None


@dataclass(frozen=True)
class Registration:
    """What MLflow calls a version's status, and why."""

    status: str
    message: str


def registration_status(row: Mapping[str, Any] | None, event_id: Any = None) -> Registration:
    """The MLflow status of a version: `row` is its registry-view row (None: not there yet);
    `event_id` the model.registered MLflow's create published for it, if it did."""
    if row is None:
        return Registration(PENDING, "model.registered is published; ingest has not stored the artifact yet")
    if event_id is not None and row.get("correlation_id") is not None and str(row["correlation_id"]) != str(event_id):
        return Registration(FAILED, f"version {row['version']} was taken by another registration "
                                    f"(correlation id {row['correlation_id']})")
    status = row.get("status")
    if status == "validated":
        return Registration(READY, "validated")
    if status in ("rejected", "quarantined"):
        reasons = "; ".join(f"{r.get('code')}: {r.get('message')}" for r in row.get("reasons") or [])
        return Registration(FAILED, f"{status}: {reasons or 'no reason recorded'}")
    return Registration(PENDING, f"{status}: waiting for validation")


def millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def tag_list(tags: Mapping[str, Any] | None) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in sorted((tags or {}).items())]


def _clean(message: dict[str, Any]) -> dict[str, Any]:
    """proto3 JSON leaves unset fields out; so do we (the client parses either)."""
    return {k: v for k, v in message.items() if v is not None and v != [] and v != ""}


def model_version(row: Mapping[str, Any], *, aliases: Iterable[str] = (),
                  registration: Registration | None = None) -> dict[str, Any]:
    """An MLflow ModelVersion from a version row (the view's columns, plus `mlflow_tags` and
    `mlflow_description` from the labels and `source` of a pending registration)."""
    registration = registration or registration_status(row)
    tags = {**(row.get("tags") or {}), **(row.get("mlflow_tags") or {})}
    return _clean({
        "name": row["name"],
        "version": str(row["version"]),
        "creation_timestamp": millis(row.get("created_at")),
        "last_updated_timestamp": millis(row.get("updated_at") or row.get("created_at")),
        "user_id": row.get("registered_by"),
        "current_stage": STAGE_TO_MLFLOW.get(row.get("stage") or "none", "None"),
        "description": row.get("mlflow_description") if row.get("mlflow_description") is not None
        else row.get("description"),
        "source": row.get("source_uri") or row.get("source"),
        "run_id": row.get("run_id"),
        "status": registration.status,
        "status_message": registration.message,
        "tags": tag_list(tags),
        "aliases": sorted(aliases),
        "model_id": tags.get(MODEL_ID_TAG),
    })


def registered_model(model: Mapping[str, Any], *, latest: Iterable[dict[str, Any]] = (),
                     tags: Mapping[str, str] | None = None,
                     aliases: Mapping[str, int] | None = None) -> dict[str, Any]:
    """An MLflow RegisteredModel: `model` has name, created_at, updated_at, description,
    created_by; `aliases` maps alias -> version (the champion included)."""
    return _clean({
        "name": model["name"],
        "creation_timestamp": millis(model.get("created_at")),
        "last_updated_timestamp": millis(model.get("updated_at") or model.get("created_at")),
        "user_id": model.get("created_by"),
        "description": model.get("description"),
        "latest_versions": list(latest),
        "tags": tag_list(tags),
        "aliases": [{"alias": a, "version": str(v)} for a, v in sorted((aliases or {}).items())],
    })


def latest_per_stage(rows: Iterable[Mapping[str, Any]], stages: Iterable[str] | None = None) -> list[Mapping[str, Any]]:
    """MLflow's latest_versions: the highest version in each stage (those asked for, or all)."""
    wanted = {stage_from_mlflow(s) for s in stages} if stages else None
    best: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        stage = row.get("stage") or "none"
        if wanted is not None and stage not in wanted:
            continue
        if stage not in best or row["version"] > best[stage]["version"]:
            best[stage] = row
    return sorted(best.values(), key=lambda r: r["version"])


def parse_version(text: Any) -> int:
    """MLflow sends versions as strings; ValueError says what a version is."""
    try:
        version = int(str(text).strip())
    except ValueError:
        raise ValueError(f"version {str(text)[:40]!r}: expected a whole number") from None
    if not 1 <= version <= 2**31 - 1:
        raise ValueError(f"version {version}: expected 1 to {2**31 - 1}")
    return version
