"""Generates `schemas/`, the published contract, from the event models.

- `<topic>.schema.json`: JSON Schema (draft 2020-12) of the whole CloudEvent on that topic;
- `examples/<topic>.json`: one valid event per topic;
- `asyncapi.yaml`: an AsyncAPI 3.0 document of every topic, its key and payload, and of
  what each service sends and receives: those operations come from the services' FastStream
  apps (`service_specifications`: the subscriber and publishers each declares at start-up).

`modelreg schemas generate` writes them; `modelreg schemas check` (and a test) fails on drift.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from shared.attestation import promotion_statement, sign_statement
from shared.broker import declare_publishers, subscribe
from shared.consumer import Record
from shared.events import CATALOGUE, CONTENT_TYPE, MODEL_NAME_PATTERN, EventSpec
from shared.kafka_acls import SERVICE_PRINCIPALS, SERVICE_READS
from shared.keys import KEY_ID_ATTRIBUTE, SIGNATURE_ATTRIBUTE, SigningKey
from shared.manifest import MANIFEST_DIGEST_RULE
from shared.settings import Settings
from shared.signing import INTERNAL_TOPICS

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE = "https://modelreg.dev/schemas/"
CONSUMED_BY = {
    "model.registered": ["ingest"],
    "model.ingested": ["validation", "promotion"],
    "model.validated": ["promotion"],
    "model.rejected": ["archival"],
    "qa.requested": ["QA systems"],
    "metrics.evaluated": ["promotion"],
    "promotion.requested": ["promotion", "archival (restores)"],
    "model.promoted": ["archival", "deployment systems"],
    "model.demoted": ["archival"],
    "model.archived": ["promotion", "ops"],
    "model.restored": ["promotion", "ops"],
    "registry.audit": ["audit writer", "ops"],
    "registry.dlq": ["ops"],
}

_SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
_IDS = {t: f"0190a0f0-0000-7000-8000-{i:012d}" for i, t in enumerate(CATALOGUE, start=1)}
_CORRELATION = _IDS["model.registered"]
_EXAMPLE_DATA: dict[str, dict[str, Any]] = {
    "model.registered": {
        "name": "fraud-detector", "version": None,
        "artifact": {"uri": "s3://ml-artifacts/fraud/run-42/model.pkl", "sha256": _SHA,
                     "size_bytes": 1048576, "format": "pickle"},
        "run_id": "run-42", "metrics": {"auc": 0.931, "logloss": 0.21},
        "params": {"max_depth": 6, "learning_rate": 0.1, "objective": "binary"},
        "tags": {"team": "risk"}, "dataset": {"uri": "s3://datasets/fraud", "version": "2026-11-01"},
        "signature": {"inputs": [{"name": "amount", "type": "double"}],
                      "outputs": [{"name": "score", "type": "double"}]},
        "description": "Gradient-boosted fraud scorer", "registered_by": "pipelines/fraud-train",
    },
    "model.ingested": {
        "name": "fraud-detector", "version": 3,
        "artifact": {"uri": f"s3://modelreg/artifacts/fraud-detector/3/{_SHA}", "sha256": _SHA,
                     "size_bytes": 1048576, "format": "pickle"},
        "run_id": "run-42", "registered_by": "pipelines/fraud-train",
        "dataset": {"uri": "s3://datasets/fraud", "version": "2026-11-01"},
        "description": "Gradient-boosted fraud scorer",
    },
    "model.validated": {
        "name": "fraud-detector", "version": 3,
        "checks": [{"name": "checksum", "passed": True, "detail": "sha256 matches"},
                   {"name": "pickle_safety", "passed": True, "detail": "no disallowed imports"}],
    },
    "model.rejected": {
        "name": "fraud-detector", "version": 4,
        "reasons": [{"code": "unsafe_pickle", "message": "imports os.system"}],
    },
    "qa.requested": {
        "name": "fraud-detector", "version": 3, "suites": ["offline-eval", "fairness"],
        "artifact": {"uri": f"s3://modelreg/artifacts/fraud-detector/3/{_SHA}", "sha256": _SHA},
    },
    "metrics.evaluated": {
        "name": "fraud-detector", "version": 3, "suite": "offline-eval", "environment": "offline",
        "metrics": {"auc": 0.93, "latency_p99_ms": 12.5}, "passed": True,
        "dataset": {"uri": "s3://datasets/fraud-holdout", "version": "2026-11-01"},
        "evaluator": "qa/offline-runner",
    },
    "promotion.requested": {
        "name": "fraud-detector", "version": 3, "to_stage": "production", "actor": "alice",
        "reason": "hotfix for the November incident",
    },
    "model.promoted": {
        "name": "fraud-detector", "version": 3, "from_stage": "staging", "to_stage": "production",
        "reason": "policy", "policy_revision": "sha256:4c1f0e",
        "evidence": {"thresholds": {"auc": {"op": ">=", "value": 0.9, "actual": 0.93}},
                     "champion": {"metric": "auc", "candidate": 0.93, "champion": 0.91}},
        "previous_champion": 2,
    },
    "model.demoted": {
        "name": "fraud-detector", "version": 2, "from_stage": "production", "to_stage": "staging",
        "reason": "superseded", "evidence": {"superseded_by": 3},
    },
    "model.archived": {
        "name": "fraud-detector", "version": 1, "from_stage": "staging", "reason": "superseded",
        "restorable": True,
    },
    "model.restored": {
        "name": "fraud-detector", "version": 1, "actor": "alice",
        "artifact_uri": "s3://modelreg-artifacts/fraud-detector/sha256/9f86d081884c7d65.bin",
        "reason": "bring v1 back for a comparison run",
    },
    "registry.audit": {
        "action": "promoted", "name": "fraud-detector", "version": 3, "from_stage": "staging",
        "to_stage": "production", "actor": "modelreg/promotion", "reason": "policy",
        "evidence": {"policy_revision": "sha256:4c1f0e"},
    },
    "registry.dlq": {
        "original_topic": "model.registered", "partition": 2, "offset": 1187, "key": "fraud-detector",
        "payload_b64": "bm90IGpzb24=", "error": {"kind": "not_json", "message": "Expecting value"},
        "service": "ingest",
    },
}


def json_schema(spec: EventSpec) -> dict[str, Any]:
    schema = spec.envelope.model_json_schema(mode="validation")
    schema = {"$schema": SCHEMA_DIALECT, "$id": f"{SCHEMA_BASE}{spec.topic}.schema.json",
              **schema, "title": spec.topic, "description": spec.summary}
    schema["properties"]["type"] = {"const": spec.topic, "type": "string",
                                    "description": "The event type: the topic it travels on."}
    if spec.topic in INTERNAL_TOPICS:
        schema["properties"][SIGNATURE_ATTRIBUTE] = {
            "type": "string", "pattern": "^[A-Za-z0-9_-]{86}$",
            "description": "Ed25519 signature (base64url, no padding) of the RFC 8785 canonical JSON "
                           "of this event without `signature` and `signingkey`."}
        schema["properties"][KEY_ID_ATTRIBUTE] = {
            "type": "string", "pattern": "^[0-9a-f]{16}$",
            "description": "Id of the signing key in the registry's keyring (GET /api/v1/keys): the "
                           "first 16 hex digits of the SHA-256 of the raw public key."}
        schema["required"] = [*schema["required"], SIGNATURE_ATTRIBUTE, KEY_ID_ATTRIBUTE]
    return schema


# Examples of the registry's own events are signed with this published, well-known key, so
# that they show (and tests check) the signature's form; it is in no keyring.
_EXAMPLE_KEY = SigningKey.from_seed(
    "example", hashlib.sha256(b"modelreg example signing key: not secret, never trusted").digest())


def example(spec: EventSpec) -> dict[str, Any]:
    data = {k: v for k, v in json.loads(json.dumps(_EXAMPLE_DATA[spec.topic])).items() if v is not None}
    event = {
        "specversion": "1.0", "id": _IDS[spec.topic], "type": spec.topic,
        "source": "pipelines/fraud-train" if spec.topic == "model.registered"
        else f"modelreg/{spec.produced_by.split(',')[0].strip()}",
        "time": "2026-11-27T10:00:00Z", "datacontenttype": "application/json",
        "correlationid": _CORRELATION, "causationid": _CORRELATION, "data": data,
    }
    if "name" in data:
        event["subject"] = data["name"]
    if spec.topic == "model.promoted":
        data["attestation"] = _example_attestation(data)
    if spec.topic in INTERNAL_TOPICS:
        event = _EXAMPLE_KEY.sign_event(event)
    spec.envelope.model_validate_json(json.dumps(event))  # an example that does not parse is a bug
    return event


def _example_attestation(data: dict[str, Any]) -> dict[str, Any]:
    return sign_statement(_EXAMPLE_KEY, promotion_statement(
        name=data["name"], version=data["version"], from_stage=data["from_stage"], to_stage=data["to_stage"],
        reason=data["reason"], artifact_uri="s3://modelreg-artifacts/artifacts/fraud-detector/3/" + "9f86d081" * 8,
        sha256="9f86d081" * 8, policy_revision=data["policy_revision"],
        evidence={"gates": [{"gate": "threshold:auc", "passed": True}, {"gate": "champion", "passed": True}]},
        previous_champion=data["previous_champion"],
        promoted_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC)))


class _NeverDelivered:
    """The batch processor of a subscription declared only to be documented."""

    def __init__(self, service: str) -> None:
        self.consumer = service

    async def process(self, records: Sequence[Record]) -> None:
        raise RuntimeError(f"{self.consumer}: a subscription declared for documentation received records")


@functools.cache
def service_specifications() -> dict[str, dict[str, Any]]:
    """Each service's AsyncAPI 3.0 document as FastStream generates it: the batch subscriber
    (`shared.broker.subscribe`) and the publishers (`declare_publishers`) the service declares
    at start-up, here on a broker that never connects and with no topic prefix. What a service
    reads is its ACL table's (`SERVICE_READS`; tests/unit/test_service_subscriptions.py checks
    it is what its handlers consume); the API has no subscriber and publishes through its SDK
    producer, so only its publishers are declared."""
    settings = Settings.model_construct(topic_prefix="")  # the contract's names; no environment read
    documents = {}
    for service in SERVICE_PRINCIPALS:
        broker = KafkaBroker()
        if SERVICE_READS[service]:
            subscribe(broker, settings, _NeverDelivered(service), SERVICE_READS[service])
        declare_publishers(broker, settings, service)
        schema = AsyncAPI(broker, title=f"modelreg {service}", schema_version="3.0.0").to_specification()
        documents[service] = schema.to_jsonable()
    return documents


def service_operations(documents: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(service, action, topic) of every operation in `documents`: action "send" or "receive"."""
    found = []
    for service, document in documents.items():
        for operation in document["operations"].values():
            channel = document["channels"][operation["channel"]["$ref"].removeprefix("#/channels/")]
            found.append((service, operation["action"], channel["address"]))
    return sorted(set(found))


def asyncapi() -> dict[str, Any]:
    channels, operations, messages = {}, {}, {}
    for topic, spec in CATALOGUE.items():
        message_id = _camel(topic)
        channels[message_id] = {
            "address": topic,
            "description": spec.summary,
            "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        }
        messages[message_id] = {
            "name": topic,
            "title": topic,
            "summary": spec.summary,
            "contentType": CONTENT_TYPE,
            "payload": {"$ref": f"./{topic}.schema.json"},
            "headers": {"type": "object", "properties": {
                "content-type": {"type": "string", "const": CONTENT_TYPE},
                "traceparent": {"type": "string", "description": "W3C trace context"}}},
            "bindings": {"kafka": {"key": {"type": "string", "pattern": MODEL_NAME_PATTERN,
                                           "description": "the model name: one model's events stay ordered"},
                                   "bindingVersion": "0.5.0"}},
            "examples": [{"name": "example", "payload": example(spec)}],
            "x-produced-by": spec.produced_by,
            "x-consumed-by": CONSUMED_BY.get(topic, []),
        }
        operations[f"publish{message_id[0].upper()}{message_id[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{message_id}"},
            "summary": f"{spec.produced_by} publish {topic}",
            "messages": [{"$ref": f"#/channels/{message_id}/messages/{message_id}"}],
        }
    for service, action, topic in service_operations(service_specifications()):
        if topic not in CATALOGUE:
            raise ValueError(f"{service} declares {action} on {topic}, which is no contract topic")
        message_id = _camel(topic)
        operations[f"{service}{action.capitalize()}{message_id[0].upper()}{message_id[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{message_id}"},
            "summary": f"{service} {action}s {topic}"
                       + (" (through its outbox)" if action == "send" and service != "api" else ""),
            "messages": [{"$ref": f"#/channels/{message_id}/messages/{message_id}"}],
            "x-service": service,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "modelreg events", "version": "1.0.0",
                 "description": "Every Kafka message is a CloudEvents 1.0 structured-mode JSON "
                                "object; the Kafka key is the model name. Artifacts: "
                                + MANIFEST_DIGEST_RULE},
        "defaultContentType": CONTENT_TYPE,
        "servers": {"local": {"host": "127.0.0.1:9092", "protocol": "kafka",
                              "description": "`modelreg stack up`"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _camel(topic: str) -> str:
    head, *rest = topic.replace("-", ".").split(".")
    return head + "".join(part.capitalize() for part in rest)


def render() -> dict[str, str]:
    """Every file of `schemas/`, by relative path."""
    files = {}
    for topic, spec in CATALOGUE.items():
        files[f"{topic}.schema.json"] = json.dumps(json_schema(spec), indent=2, sort_keys=False) + "\n"
        files[f"examples/{topic}.json"] = json.dumps(example(spec), indent=2) + "\n"
    files["asyncapi.yaml"] = yaml.safe_dump(asyncapi(), sort_keys=False, width=100)
    return files


def write(directory: Path) -> list[Path]:
    written = []
    for relative, text in render().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """What differs between `directory` and the models: one line per file."""
    expected = render()
    problems = []
    for relative, text in expected.items():
        path = directory / relative
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text() != text:
            problems.append(f"out of date: {path}")
    known = set(expected)
    for path in sorted(directory.rglob("*.json")) + sorted(directory.rglob("*.yaml")):
        if str(path.relative_to(directory)) not in known:
            problems.append(f"not generated (stale?): {path}")
    return problems
