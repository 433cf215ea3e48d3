"""Request and response bodies of the HTTP API, as published in /openapi.json."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.events import (
    Dataset,
    Environment,
    Metrics,
    ModelName,
    ShortText,
    Stage,
)

Json = dict[str, Any]


def _check_text(value: Any, where: str = "body") -> None:
    """Text must travel through Kafka (UTF-8) and into PostgreSQL (no NUL) unchanged."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where}: text must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}" if isinstance(key, str) else where)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        _check_text(value)
        return value


class EvaluationRequest(RequestBody):
    """A QA or monitoring result for one version (published as `metrics.evaluated`)."""

    suite: ShortText
    environment: Environment = "offline"
    metrics: Annotated[Metrics, Field(min_length=1)]
    passed: bool | None = None
    dataset: Dataset | None = None
    evaluator: ShortText | None = Field(None, description="the token's name (the default); any other is refused")


class PromotionRequest(RequestBody):
    """Ask to move a version (published as `promotion.requested`; the token's name is the actor)."""

    to_stage: Stage
    reason: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


class Accepted(BaseModel):
    """The request became an event; what the registry does with it shows in the audit log."""

    status: Literal["accepted"] = "accepted"
    event_id: uuid.UUID
    topic: str
    name: ModelName
    version: int | None = None
    actor: str
    artifact: Json | None = None


class ModelSummary(BaseModel):
    name: str
    champion: int | None
    latest_version: int
    version_count: int
    stages: dict[str, int] = Field(description="how many versions are in each stage")
    updated_at: datetime


class ModelPage(BaseModel):
    items: list[ModelSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class VersionSummary(BaseModel):
    version: int
    stage: Stage
    status: str
    is_champion: bool
    created_at: datetime
    updated_at: datetime
    registered_by: str | None
    key_metrics: dict[str, float] = Field(description="the metrics the policy judges: newest QA result, "
                                                      "else the value reported at registration")
    tags: dict[str, str]


class ModelDetail(BaseModel):
    name: str
    champion: int | None
    latest_version: int
    version_count: int
    created_at: datetime
    updated_at: datetime
    policy_revision: str
    rule: Json = Field(description="the policy rule that applies to this model")
    chart_metric: str | None
    versions: list[VersionSummary]


class Artifact(BaseModel):
    uri: str | None
    sha256: str | None
    size_bytes: int | None
    format: str | None
    source_uri: str | None = None
    archive_uri: str | None = None
    archived: bool = False


class Evaluation(BaseModel):
    seq: int
    suite: str | None
    environment: str | None
    metrics: Json
    passed: bool | None
    evaluator: str | None
    dataset: Json | None
    at: datetime


class StageChange(BaseModel):
    seq: int
    version: int
    from_stage: str | None
    to_stage: str
    reason: str | None
    actor: str
    evidence: Json
    at: datetime


class VersionDetail(BaseModel):
    name: str
    version: int
    stage: Stage
    status: str
    is_champion: bool
    run_id: str | None
    metrics: Json
    params: Json
    tags: Json
    dataset: Json | None
    signature: Json | None
    description: str | None
    registered_by: str | None
    correlation_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    artifact: Artifact
    checks: list[Json]
    reasons: list[Json]
    evaluations: list[Evaluation]
    stage_history: list[StageChange]


class Production(BaseModel):
    name: str
    version: int
    since: datetime | None = Field(description="when this version became the champion")
    until: datetime | None = Field(None, description="with `at`: when it stopped being the champion")
    at: datetime | None = Field(None, description="the moment asked about (`?at=`)")
    artifact: Artifact


class GateResult(BaseModel):
    seq: int
    suite: str | None
    environment: str | None
    at: datetime
    passed: bool | None
    evaluator: str | None
    metric: str | None = None
    value: float | None = None


class GateChampion(BaseModel):
    version: int
    value: float | None
    result: GateResult | None


class GateDoc(BaseModel):
    gate: str
    kind: str
    passed: bool
    detail: str
    metric: str | None
    threshold: str | None
    suite: str | None
    results: list[GateResult]
    champion: GateChampion | None


class Explanation(BaseModel):
    name: str
    version: int
    stage: str
    status: str
    blocked: str | None
    would_promote: bool
    all_gates_pass: bool
    summary: str
    policy_revision: str
    rule: Json
    champion_version: int | None
    gates: list[GateDoc]


class ArtifactFileLink(BaseModel):
    """One file of a directory artifact: its presigned URL and what it must hash to."""

    path: str
    sha256: str
    size_bytes: int
    url: str


class ArtifactLink(BaseModel):
    url: str = Field(description="The file; for a directory artifact, its canonical manifest (whose SHA-256 "
                                 "is sha256)")
    expires_at: datetime
    expires_in: int
    uri: str
    sha256: str | None
    size_bytes: int | None
    archived: bool
    files: list[ArtifactFileLink] | None = Field(
        None, description="A directory artifact's files, each with its URL, sha256 and size from the manifest")


class AuditRecord(BaseModel):
    seq: int
    event_id: uuid.UUID
    action: str
    name: str
    version: int | None
    from_stage: str | None
    to_stage: str | None
    actor: str
    reason: str | None
    evidence: Json
    correlation_id: uuid.UUID | None
    causation_id: uuid.UUID | None
    source: str
    occurred_at: datetime
    recorded_at: datetime
    hash: str


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None


class Health(BaseModel):
    status: Literal["ok"]
    policy_revision: str
