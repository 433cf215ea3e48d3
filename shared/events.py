"""The event contract: CloudEvents 1.0 envelopes and the data of every topic.

Pipelines and QA systems are built against these names; add optional fields, never rename or
repurpose one. A breaking change is a new event type. `schemas/` is generated from this module
(`modelreg schemas generate`) and a test fails when the two drift apart.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    model_validator,
)

from shared.manifest import (
    MANIFEST_DIGEST_RULE,
    MAX_MANIFEST_FILES,
    FileEntry,
    is_directory_uri,
    manifest_digest,
    path_problem,
)

SPEC_VERSION: Final = "1.0"  # Final: its type is the Literal the envelope requires
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE: Final = "application/json"
MAX_MESSAGE_BYTES = 1024 * 1024
# A dead letter carries the refused message base64-encoded (4/3 of it) in its envelope: one
# that refused a message for being too large is larger than any other topic allows.
MAX_DEAD_LETTER_BYTES = 4 * 1024 * 1024
MAX_MAP_ENTRIES = 256
# No contract event nests deeper than a dozen levels; a parser meeting thousands recurses into
# a RecursionError. Checked on the raw bytes, before any parser sees them.
MAX_JSON_DEPTH = 64
# CloudEvents extension attributes are free: bounded here, so none can carry a payload.
MAX_EXTENSIONS = 32
MAX_EXTENSION_CHARS = 4096
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
# Stands in for the model name where a poison message carried none; the name pattern can
# never produce it, so it cannot collide with a real model.
UNKNOWN_MODEL = "_unknown"

Stage = Literal["none", "staging", "production", "archived"]
STAGES: tuple[Stage, ...] = ("none", "staging", "production", "archived")
Environment = Literal["offline", "staging", "production"]

ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
VersionNumber = Annotated[int, Field(ge=1, le=2**31 - 1)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Key = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
LongText = Annotated[str, StringConstraints(max_length=10_000)]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
ArtifactFormat = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._+-]{0,31}$")]
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]
Metrics = Annotated[dict[Key, FiniteFloat], Field(max_length=MAX_MAP_ENTRIES)]
Tags = Annotated[dict[Key, Annotated[str, StringConstraints(max_length=1024)]], Field(max_length=MAX_MAP_ENTRIES)]
ParamValue = Annotated[str, StringConstraints(max_length=4096)] | int | FiniteFloat | bool | None
Params = Annotated[dict[Key, ParamValue], Field(max_length=MAX_MAP_ENTRIES)]
Evidence = Annotated[dict[Key, JsonValue], Field(max_length=MAX_MAP_ENTRIES)]


class Data(BaseModel):
    """Base of every event's data: strict, frozen, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------- data parts


_URI_DOC = ("One file (s3://bucket/key, file:///path), or a directory: an S3 prefix or a file:// "
            "directory, ending in '/' (s3://bucket/path/, file:///dir/).")


def _artifact_path(value: str) -> str:
    problem = path_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class ArtifactSpec(Data):
    """An artifact as a pipeline announces it: where it is and what it must hash to."""

    uri: Annotated[Uri, Field(description=_URI_DOC)]
    sha256: Annotated[Sha256, Field(description=MANIFEST_DIGEST_RULE)]
    size_bytes: Annotated[int, Field(ge=0, le=5 * 1024**4,
                                     description="The file's size; for a directory, its files' total.")]
    format: ArtifactFormat | None = None


class ManifestFile(Data):
    """One file of a directory artifact, as its manifest lists it."""

    path: Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_artifact_path),
                    Field(description="Relative to the artifact's directory, '/'-separated.")]
    size_bytes: Annotated[int, Field(ge=0)]
    sha256: Sha256


class ArtifactRef(Data):
    """The registry's own copy of an artifact."""

    uri: Uri
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    format: ArtifactFormat | None = None
    # Added for directory artifacts (the URI ends in '/'): every file, sorted by path, whose
    # canonical manifest hashes to `sha256`. Absent for a single file.
    files: Annotated[list[ManifestFile], Field(
        min_length=1, max_length=MAX_MANIFEST_FILES,
        description="A directory artifact's manifest: every file under `uri`, sorted by path "
                    "(UTF-8 bytes); `sha256` is the digest of its canonical form (see sha256). "
                    "Absent for a single-file artifact.")] | None = None

    @model_validator(mode="after")
    def _manifest_matches(self) -> ArtifactRef:
        if self.files is None:
            if is_directory_uri(self.uri):
                raise ValueError("a directory artifact (uri ending in '/') needs its files")
            return self
        if not is_directory_uri(self.uri):
            raise ValueError("files are listed for directory artifacts only (uri ending in '/')")
        entries = [FileEntry(f.path, f.size_bytes, f.sha256) for f in self.files]
        if [e.path.encode() for e in entries] != sorted({e.path.encode() for e in entries}):
            raise ValueError("files must be sorted by path (UTF-8 bytes), each path once")
        if manifest_digest(entries) != self.sha256:
            raise ValueError("sha256 is not the digest of the files' canonical manifest")
        if self.size_bytes is not None and self.size_bytes != sum(e.size_bytes for e in entries):
            raise ValueError("size_bytes is not the files' total")
        return self

    def manifest(self) -> list[FileEntry] | None:
        """The files as plain entries (None for a single file)."""
        if self.files is None:
            return None
        return [FileEntry(f.path, f.size_bytes, f.sha256) for f in self.files]


class QaArtifact(Data):
    uri: Uri
    sha256: Sha256


class Dataset(Data):
    uri: Uri
    version: ShortText | None = None


class Check(Data):
    name: ShortText
    passed: bool
    detail: LongText | None = None


class Reason(Data):
    code: ReasonCode
    message: LongText


class DlqError(Data):
    kind: ReasonCode
    message: LongText


# ---------------------------------------------------------------------------- topic data


class ImportedFrom(Data):
    """Where an imported version came from (`modelreg import mlflow`): the other registry's
    ids, for the audit trail. On `model.registered` (passed on in `model.ingested`) it is a
    pipeline's claim: it only keeps the version out of automatic staging. On an ops
    `promotion.requested` by an approver it asks promotion to give the version `stage` once it
    passed validation, without the policy's gates (README: Importing from MLflow)."""

    system: Literal["mlflow"]
    tracking_uri: Uri
    model: Annotated[str, StringConstraints(min_length=1, max_length=512)]  # the name over there
    version: VersionNumber
    run_id: ShortText | None = None
    source: Uri | None = None
    stage: Stage
    aliases: Annotated[list[ShortText], Field(max_length=MAX_MAP_ENTRIES)] = []


class ModelRegisteredData(Data):
    name: ModelName
    version: VersionNumber | None = None
    artifact: ArtifactSpec
    run_id: ShortText | None = None
    metrics: Metrics = {}
    params: Params = {}
    tags: Tags = {}
    dataset: Dataset | None = None
    signature: Annotated[dict[Key, JsonValue], Field(max_length=MAX_MAP_ENTRIES)] | None = None
    description: LongText | None = None
    registered_by: ShortText | None = None
    imported_from: ImportedFrom | None = None


class ModelIngestedData(Data):
    name: ModelName
    version: VersionNumber
    artifact: ArtifactRef
    run_id: ShortText | None = None
    # Added beside the contract's fields, all optional: promotion needs `registered_by` for
    # separation of duties, validation the metadata its policy may require.
    registered_by: ShortText | None = None
    dataset: Dataset | None = None
    signature: Annotated[dict[Key, JsonValue], Field(max_length=MAX_MAP_ENTRIES)] | None = None
    description: LongText | None = None
    imported_from: ImportedFrom | None = None


class ModelValidatedData(Data):
    name: ModelName
    version: VersionNumber
    checks: Annotated[list[Check], Field(max_length=MAX_MAP_ENTRIES)]


class ModelRejectedData(Data):
    name: ModelName
    version: VersionNumber | None = None
    reasons: Annotated[list[Reason], Field(min_length=1, max_length=MAX_MAP_ENTRIES)]


class QaRequestedData(Data):
    name: ModelName
    version: VersionNumber
    suites: Annotated[list[ShortText], Field(max_length=MAX_MAP_ENTRIES)]
    artifact: QaArtifact | None = None


class MetricsEvaluatedData(Data):
    name: ModelName
    version: VersionNumber
    suite: ShortText
    environment: Environment
    metrics: Metrics
    passed: bool | None = None
    dataset: Dataset | None = None
    evaluator: ShortText | None = None


class PromotionRequestedData(Data):
    name: ModelName
    version: VersionNumber
    to_stage: Stage
    actor: ShortText
    reason: LongText
    imported_from: ImportedFrom | None = None


class AttestationSignature(Data):
    keyid: Annotated[str, StringConstraints(min_length=1, max_length=64),
                     Field(description="The signing key's kid in the registry's JWKS (GET /api/v1/keys).")]
    sig: Annotated[str, StringConstraints(min_length=1, max_length=1024),
                   Field(description="Ed25519 signature (standard base64) of the DSSE v1 PAE of "
                                     "payloadType and the decoded payload.")]


class Attestation(Data):
    """A DSSE envelope holding the registry's in-toto statement of a promotion (predicate
    https://modelreg.dev/attestations/promotion/v1: name, version, stage, reason, policy
    revision, gates passed, approvers, time; subject: the artifact's sha256), signed by
    promotion's key. Verifiable without the CloudEvent around it (README: Signed promotions)."""

    payloadType: Literal["application/vnd.in-toto+json"]  # noqa: N815 (DSSE's field names)
    payload: Annotated[str, StringConstraints(min_length=1, max_length=65_536),
                       Field(description="The statement's JSON, standard base64.")]
    signatures: Annotated[list[AttestationSignature], Field(min_length=1, max_length=4)]


class ModelPromotedData(Data):
    name: ModelName
    version: VersionNumber
    from_stage: Stage
    to_stage: Stage
    reason: Literal["policy", "manual", "rollback"]
    policy_revision: ShortText | None = None
    evidence: Evidence = {}
    previous_champion: VersionNumber | None = None
    # Added: the signed statement of this promotion (absent on events from before it).
    attestation: Attestation | None = None


class ModelDemotedData(Data):
    name: ModelName
    version: VersionNumber
    from_stage: Stage
    to_stage: Stage
    reason: ReasonCode
    evidence: Evidence = {}


class ModelArchivedData(Data):
    name: ModelName
    version: VersionNumber
    from_stage: Stage
    reason: Literal["superseded", "rejected", "expired", "manual"]
    restorable: bool = True


class ModelRestoredData(Data):
    """An archived version is back: its artifact is where it was before archiving (the same
    URI and digest), and the version is in stage `none`, movable like any other."""

    name: ModelName
    version: VersionNumber
    artifact_uri: Uri
    actor: ShortText
    reason: LongText | None = None


# ---------------------------------------------------------------------------- audit evidence
#
# What a `registry.audit` record's `evidence` holds, typed per action for the actions the read
# model and replay are built from. `Tx.audit` takes these models for these actions (a dict is
# refused), so a renamed field is a type error where it is written and where it is read, and a
# diff of `schemas/registry.audit.schema.json` (which carries them as an `if action = ... then
# evidence: ...` per action). On the wire `evidence` stays a JSON object: records written
# before the types existed, and other actions' free-form evidence, parse as before.

class AuditEvidence(BaseModel):
    """Base of typed evidence; `ACTION` names the audit action it belongs to."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ACTION: ClassVar[str]
    # Who really sent the event that caused the record (a verified key, or its topic's ACL
    # role), where that is not the record's actor; `Tx.audit` adds it.
    sent_by: str | None = None

    def as_dict(self) -> dict[str, JsonValue]:
        """The JSON object written: the fields the producer set (an explicit None included)."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def read(cls, evidence: Mapping[str, Any]) -> Self:
        """A stored record's evidence, leniently: keys this type does not know (e.g. `sent_by`)
        are left out, values that do not fit are dropped rather than failing the read model."""
        known = {k: v for k, v in evidence.items() if k in cls.model_fields}
        try:
            return cls.model_validate(known)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            return cls.model_validate({k: v for k, v in known.items() if k not in bad})


class IngestedEvidence(AuditEvidence):
    ACTION: ClassVar[str] = "ingested"
    sha256: str | None = None
    size_bytes: int | None = None
    artifact_uri: str | None = None
    source_uri: str | None = None
    already_stored: bool | None = None
    file_count: int | None = None
    run_id: str | None = None
    metrics: dict[str, JsonValue] | None = None
    tags: dict[str, JsonValue] | None = None
    params: dict[str, JsonValue] | None = None
    format: str | None = None
    description: str | None = None
    dataset: dict[str, JsonValue] | None = None
    signature: dict[str, JsonValue] | None = None
    imported_from: dict[str, JsonValue] | None = None


class RejectedEvidence(AuditEvidence):
    """Ingest's refusals carry `code` and `source_uri` (and what did not match); validation's
    carry its `checks`."""

    ACTION: ClassVar[str] = "rejected"
    code: str | None = None
    source_uri: str | None = None
    checks: list[dict[str, JsonValue]] | None = None
    policy_revision: str | None = None
    requested_version: int | None = None
    expected_sha256: str | None = None
    found_sha256: str | None = None
    expected_size: int | None = None
    found_size: int | None = None


class ValidatedEvidence(AuditEvidence):
    ACTION: ClassVar[str] = "validated"
    checks: list[dict[str, JsonValue]] = []
    policy_revision: str | None = None
    qa_suites: list[str] = []


class QuarantinedEvidence(AuditEvidence):
    """The integrity check before production found the stored artifact changed."""

    ACTION: ClassVar[str] = "quarantined"
    expected_sha256: str | None = None
    found_sha256: str | None = None
    artifact_uri: str | None = None
    files: list[dict[str, JsonValue]] | None = None  # a directory's changed, missing, extra files
    manifest_error: str | None = None


class EvaluatedEvidence(AuditEvidence):
    ACTION: ClassVar[str] = "evaluated"
    suite: str | None = None
    environment: str | None = None
    metrics: dict[str, JsonValue] = {}
    passed: bool | None = None
    evaluator: str | None = None
    dataset: dict[str, JsonValue] | None = None


class ArchivedEvidence(AuditEvidence):
    ACTION: ClassVar[str] = "archived"
    archive_uri: str | None = None
    artifact_uri: str | None = None
    restorable: bool | None = None


TYPED_EVIDENCE: dict[str, type[AuditEvidence]] = {
    model.ACTION: model for model in (IngestedEvidence, RejectedEvidence, ValidatedEvidence, QuarantinedEvidence,
                                      EvaluatedEvidence, ArchivedEvidence)}


def read_evidence(action: str, evidence: Mapping[str, Any]) -> AuditEvidence | Mapping[str, Any]:
    """A record's evidence as its action's type, or as it is (a free-form action's)."""
    model = TYPED_EVIDENCE.get(action)
    return model.read(evidence) if model is not None else evidence


def _evidence_by_action(schema: dict[str, Any]) -> None:
    """registry.audit's JSON Schema: each typed action's evidence, as `if action then evidence`."""
    schema["allOf"] = [
        {"if": {"properties": {"action": {"const": action}}, "required": ["action"]},
         "then": {"properties": {"evidence": _any_json_inline(model.model_json_schema())}}}
        for action, model in TYPED_EVIDENCE.items()]


def _any_json_inline(schema: Any) -> Any:
    """A schema standing alone inside another: pydantic's recursive `JsonValue` definition
    (any JSON value) becomes `{}`, which says the same without a `$defs` of its own."""
    if isinstance(schema, dict):
        if schema.get("$ref") == "#/$defs/JsonValue":
            return {}
        return {k: _any_json_inline(v) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_any_json_inline(v) for v in schema]
    return schema


class RegistryAuditData(Data):
    """One audit record. `evidence` is typed per action for the actions the read model is
    built from (`TYPED_EVIDENCE`; the JSON Schema says which type goes with which action)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, json_schema_extra=_evidence_by_action)

    action: ReasonCode
    name: ModelName | Literal["_unknown"]
    version: VersionNumber | None = None
    from_stage: Stage | None = None
    to_stage: Stage | None = None
    actor: ShortText
    reason: LongText | None = None
    evidence: Evidence = {}


class RegistryDlqData(Data):
    original_topic: ShortText
    partition: Annotated[int, Field(ge=0)] | None = None
    offset: Annotated[int, Field(ge=0)] | None = None
    key: Annotated[str, StringConstraints(max_length=1024)] | None = None
    payload_b64: str
    error: DlqError
    service: ShortText


# ---------------------------------------------------------------------------- envelope

D = TypeVar("D", bound=Data)


class CloudEvent(BaseModel, Generic[D]):
    """A CloudEvents 1.0 structured-mode event; `type` is the topic it travels on.

    Unknown extension attributes are kept (CloudEvents allows them); the data is strict.
    """

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    topic: ClassVar[str]

    specversion: Literal["1.0"]
    id: uuid.UUID
    type: str
    source: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    time: datetime
    subject: ModelName | None = None
    datacontenttype: Literal["application/json"] = DATA_CONTENT_TYPE
    correlationid: uuid.UUID | None = None
    causationid: uuid.UUID | None = None
    data: D

    @model_validator(mode="after")
    def _consistent(self) -> CloudEvent[D]:
        if self.type != self.topic:
            raise ValueError(f"type must be {self.topic!r}, got {self.type!r}")
        if self.time.tzinfo is None:
            raise ValueError("time must carry a timezone (RFC 3339)")
        name = getattr(self.data, "name", None)
        if name is not None and name != UNKNOWN_MODEL and self.subject not in (None, name):
            raise ValueError(f"subject {self.subject!r} differs from data.name {name!r}")
        extensions = self.model_extra or {}
        if len(extensions) > MAX_EXTENSIONS:
            raise ValueError(f"{len(extensions)} extension attributes; at most {MAX_EXTENSIONS}")
        for attribute, value in extensions.items():
            if not attribute.isascii() or not attribute.isalnum() or attribute != attribute.lower():
                raise ValueError(f"extension attribute {attribute!r} must be lower-case letters and digits")
            if not isinstance(value, str | int | bool) or (
                    isinstance(value, str) and len(value) > MAX_EXTENSION_CHARS):
                raise ValueError(f"extension attribute {attribute!r} must be a string of at most "
                                 f"{MAX_EXTENSION_CHARS} characters, an integer or a boolean")
        return self

    @property
    def model_name(self) -> str:
        return getattr(self.data, "name", None) or self.subject or UNKNOWN_MODEL

    @property
    def correlation(self) -> uuid.UUID:
        """The id of the version's life; a `model.registered` event starts one with its own id."""
        return self.correlationid or self.id

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class ModelRegistered(CloudEvent[ModelRegisteredData]):
    topic = "model.registered"


class ModelIngested(CloudEvent[ModelIngestedData]):
    topic = "model.ingested"


class ModelValidated(CloudEvent[ModelValidatedData]):
    topic = "model.validated"


class ModelRejected(CloudEvent[ModelRejectedData]):
    topic = "model.rejected"


class QaRequested(CloudEvent[QaRequestedData]):
    topic = "qa.requested"


class MetricsEvaluated(CloudEvent[MetricsEvaluatedData]):
    topic = "metrics.evaluated"


class PromotionRequested(CloudEvent[PromotionRequestedData]):
    topic = "promotion.requested"


class ModelPromoted(CloudEvent[ModelPromotedData]):
    topic = "model.promoted"


class ModelDemoted(CloudEvent[ModelDemotedData]):
    topic = "model.demoted"


class ModelArchived(CloudEvent[ModelArchivedData]):
    topic = "model.archived"


class ModelRestored(CloudEvent[ModelRestoredData]):
    topic = "model.restored"


class RegistryAudit(CloudEvent[RegistryAuditData]):
    topic = "registry.audit"


class RegistryDlq(CloudEvent[RegistryDlqData]):
    topic = "registry.dlq"


@dataclass(frozen=True)
class EventSpec:
    """What the catalogue knows of one topic."""

    envelope: type[CloudEvent[Any]]
    produced_by: str
    summary: str

    @property
    def topic(self) -> str:
        return self.envelope.topic

    @property
    def data_model(self) -> type[Data]:
        return self.envelope.model_fields["data"].annotation  # type: ignore[return-value]


CATALOGUE: dict[str, EventSpec] = {
    spec.topic: spec
    for spec in (
        EventSpec(envelope=ModelRegistered, produced_by="pipelines",
                  summary="A training pipeline announces a new model version and its artifact."),
        EventSpec(envelope=ModelIngested, produced_by="ingest",
                  summary="The artifact is copied into the registry and the version is recorded."),
        EventSpec(envelope=ModelValidated, produced_by="validation",
                  summary="Every validation check passed; each check's result is listed."),
        EventSpec(envelope=ModelRejected, produced_by="ingest, validation, promotion (quarantine)",
                  summary="The version was refused, with coded reasons."),
        EventSpec(envelope=QaRequested, produced_by="validation",
                  summary="QA systems are asked to run their suites on the version."),
        EventSpec(envelope=MetricsEvaluated, produced_by="QA systems, evaluators, production monitors",
                  summary="Test or monitoring results for one version, suite and environment."),
        EventSpec(envelope=PromotionRequested, produced_by="ops",
                  summary="A person asks to move a version to a stage."),
        EventSpec(envelope=ModelPromoted, produced_by="promotion",
                  summary="A version moved up a stage, with the evidence for it."),
        EventSpec(envelope=ModelDemoted, produced_by="promotion",
                  summary="A version left a stage (superseded, rollback, quarantine)."),
        EventSpec(envelope=ModelArchived, produced_by="archival",
                  summary="A version was archived and its artifact moved to cold storage."),
        EventSpec(envelope=ModelRestored, produced_by="archival",
                  summary="An archived version was restored by an approver: its artifact is back and "
                          "its stage is none."),
        EventSpec(envelope=RegistryAudit, produced_by="every service",
                  summary="One state change (or refusal) for ops: the tamper-evident audit trail."),
        EventSpec(envelope=RegistryDlq, produced_by="every service",
                  summary="A message no service could accept, with its original bytes and the error."),
    )
}
TOPICS: tuple[str, ...] = tuple(CATALOGUE)


def new_event(
    envelope: type[CloudEvent[D]],
    data: D,
    *,
    source: str,
    correlationid: uuid.UUID | None = None,
    causationid: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
    time: datetime | None = None,
) -> CloudEvent[D]:
    """Build an event the way every modelreg producer must: all attributes set."""
    event_id = event_id or uuid.uuid4()
    name = getattr(data, "name", None)
    return envelope(
        specversion=SPEC_VERSION,
        id=event_id,
        type=envelope.topic,
        source=source,
        time=time or datetime.now(UTC),
        subject=name if name and name != UNKNOWN_MODEL else None,
        datacontenttype=DATA_CONTENT_TYPE,
        correlationid=correlationid or event_id,
        causationid=causationid or event_id,
        data=data,
    )


def follow_up(
    cause: CloudEvent[Any], envelope: type[CloudEvent[D]], data: D, *, source: str
) -> CloudEvent[D]:
    """An event caused by `cause`, in the same version's life."""
    return new_event(envelope, data, source=source, correlationid=cause.correlation,
                     causationid=cause.id)


class InvalidEvent(ValueError):
    """A message that can never be accepted: it belongs in the DLQ, not in a retry loop."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def parse_event(topic: str, value: bytes | None) -> CloudEvent[Any]:
    """Parse one Kafka message value of a contract topic, or raise `InvalidEvent`.

    The happy path parses once (pydantic's JSON parser); only a failure pays for finding out
    what kind of bad input it was.
    """
    spec = CATALOGUE.get(topic)
    if spec is None:
        raise InvalidEvent("unknown_type", f"no event type is published on topic {topic!r}")
    if value is None:
        raise InvalidEvent("empty", "the message has no value")
    limit = MAX_DEAD_LETTER_BYTES if topic == "registry.dlq" else MAX_MESSAGE_BYTES
    if len(value) > limit:
        raise InvalidEvent("too_large", f"the message is {len(value)} bytes; the limit is {limit}")
    if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidEvent("too_deep", f"the message nests arrays or objects more than {MAX_JSON_DEPTH} deep")
    try:
        event = spec.envelope.model_validate_json(value)
    except ValueError as exc:
        raise _classify(topic, value, exc) from None
    if b"\\u0000" in value and _has_nul(json.loads(value)):
        raise InvalidEvent("schema_violation", "text may not contain NUL characters (\\u0000)")
    return event


def _has_nul(value: Any) -> bool:
    """PostgreSQL cannot store NUL in text: refuse it at the boundary, not in a handler."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# +1 for an opening bracket, -1 for a closing one, 0 for any other byte.
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
_NOT_BRACKETS = bytes(b for b in range(256) if not _NESTING[b])


def json_depth(value: bytes, limit: int) -> int:
    """How deep a JSON text nests arrays and objects, as far as `limit` is concerned: above
    it exactly when the text nests deeper. Counting brackets is cheap; the strings (whose
    brackets do not nest) are only stripped when the count says it might be too deep."""
    brackets = value.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return max(accumulate(_NESTING[b] for b in brackets), default=0)
    brackets = _STRINGS.sub(b"", value).translate(None, _NOT_BRACKETS)
    return max(accumulate(_NESTING[b] for b in brackets), default=0)


def _classify(topic: str, value: bytes, exc: ValueError) -> InvalidEvent:
    try:
        raw = json.loads(value)  # the nesting is bounded by now: no RecursionError
    except ValueError as not_json:
        return InvalidEvent("not_json", f"the message is not JSON: {not_json}")
    if not isinstance(raw, dict) or "specversion" not in raw or "type" not in raw:
        return InvalidEvent("not_cloudevent", "the message is not a CloudEvents structured-mode JSON object")
    if raw.get("type") != topic:
        return InvalidEvent("unknown_type", f"event type {raw.get('type')!r} does not belong on topic {topic!r}")
    return InvalidEvent("schema_violation", _summarize(exc))


def _summarize(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for error in errors()[:10]:
        location = ".".join(str(p) for p in error.get("loc", ())) or "event"
        parts.append(f"{location}: {error.get('msg')}")
    return "; ".join(parts)
