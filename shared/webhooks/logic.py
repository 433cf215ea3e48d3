"""Webhook decisions, as plain functions (no I/O, the clock passed in), for the delivering
service and the API and CLI that manage endpoints:

- which endpoints want an event (`wants`: event types, model-name globs, stages);
- when to try a failed delivery again (`retry_delay`: exponential to a cap, honouring
  `Retry-After`; `wait_after_outage`: what that means for a receiver back after an outage);
- when an endpoint that keeps failing is switched off (`after_attempt`);
- how a message is signed (Standard Webhooks, and MLflow's headers for endpoints created
  through MLflow's API) and what its body is (`mlflow_messages` maps registry events to
  MLflow's `{entity, action, timestamp, data}`).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from shared.events import TOPICS

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# Standard Webhooks: a secret is 24 to 64 random bytes, base64 after the prefix.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
ALL_TOPICS = "*"
STAGES = ("none", "staging", "production", "archived")
Format = Literal["standard", "mlflow"]
FORMATS: tuple[str, ...] = ("standard", "mlflow")
# A receiver's Retry-After is honoured up to this long; beyond it the ordinary schedule holds
# (a mistaken "Retry-After: 31536000" must not park an endpoint for a year).
RETRY_AFTER_CEILING = timedelta(hours=6)
_GLOB = re.compile(r"^[a-z0-9*?\[\]._-]{1,128}$")


class WebhookInputError(ValueError):
    """An endpoint's settings are wrong; the message says which and why."""


# -- what an endpoint wants ----------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    """What an endpoint asked for: event types (topics, or `*`), model-name globs and stages
    (empty: any stage, including events that have none)."""

    topics: tuple[str, ...] = (ALL_TOPICS,)
    models: tuple[str, ...] = ("*",)
    stages: tuple[str, ...] = ()


def event_stage(topic: str, data: Mapping[str, Any]) -> str | None:
    """The stage an event is about: where a version moved to (promotions, demotions, requests,
    audit records), `archived` for an archiving; None for events about no stage."""
    if topic == "model.archived":
        return "archived"
    stage = data.get("to_stage")
    return stage if isinstance(stage, str) else None


def wants(subscription: Subscription, topic: str, model: str, stage: str | None) -> bool:
    """Whether an endpoint with `subscription` gets an event of `topic` about `model`."""
    if ALL_TOPICS not in subscription.topics and topic not in subscription.topics:
        return False
    if not any(fnmatch.fnmatchcase(model, glob) for glob in subscription.models):
        return False
    return not subscription.stages or stage in subscription.stages


def check_subscription(topics: Sequence[str], models: Sequence[str], stages: Sequence[str]) -> Subscription:
    """A subscription from what a person typed, or `WebhookInputError` saying what is wrong."""
    topics = tuple(dict.fromkeys(t.strip() for t in topics if t.strip())) or (ALL_TOPICS,)
    unknown = [t for t in topics if t != ALL_TOPICS and t not in TOPICS]
    if unknown:
        raise WebhookInputError(f"unknown event type(s) {', '.join(unknown)}; one of: {ALL_TOPICS}, "
                                f"{', '.join(TOPICS)}")
    if ALL_TOPICS in topics:
        topics = (ALL_TOPICS,)
    models = tuple(dict.fromkeys(m.strip() for m in models if m.strip())) or ("*",)
    bad = [m for m in models if not _GLOB.match(m)]
    if bad:
        raise WebhookInputError(f"model glob(s) {', '.join(map(repr, bad))}: lower-case letters, digits, "
                                "'.', '_', '-' and the wildcards * ? [ ], at most 128")
    stages = tuple(dict.fromkeys(s.strip() for s in stages if s.strip()))
    if bad := [s for s in stages if s not in STAGES]:
        raise WebhookInputError(f"unknown stage(s) {', '.join(bad)}; one of: {', '.join(STAGES)}")
    return Subscription(topics, models, stages)


# -- retries and disabling -----------------------------------------------------------------


@dataclass(frozen=True)
class RetrySchedule:
    """A failed delivery is tried again after `first`, then doubling, never more than `cap`
    apart (each delay stretched by up to a quarter, see `retry_delay`). The cap is what keeps
    recovery prompt: a receiver back after an outage of any length waits at most one capped
    delay (`wait_after_outage`), and any delivery that gets through pulls its endpoint's
    other waiting retries forward (store.record_attempt)."""

    first: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(minutes=5)


def retry_delay(failures: int, schedule: RetrySchedule, retry_after: timedelta | None = None,
                jitter: float = 0.0) -> timedelta:
    """How long to wait after the `failures`-th failed attempt (1 for the first): `first`
    doubled per failure up to `cap`, stretched by up to `jitter` (a fraction in [0, 1), drawn
    by the caller, so that endpoints failing together do not retry together), and never
    sooner than the receiver's `Retry-After` (up to `RETRY_AFTER_CEILING`)."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter is a fraction in [0, 1)")
    # in float seconds: a timedelta doubled a few hundred times would overflow
    seconds = min(schedule.first.total_seconds() * 2.0 ** min(failures - 1, 1000), schedule.cap.total_seconds())
    delay = timedelta(seconds=seconds * (1 + jitter * 0.25))
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CEILING))
    return delay


def wait_after_outage(outage: timedelta, schedule: RetrySchedule, jitter: float = 0.999) -> timedelta:
    """How long a receiver that was down for `outage` waits for a delivery that failed first
    at the outage's start: from its return to the next attempt (every attempt before it
    failed), with each delay stretched by `jitter` (the worst by default)."""
    at, failures = timedelta(0), 0
    while at < outage:
        failures += 1
        at += retry_delay(failures, schedule, jitter=jitter)
    return at - outage


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """`Retry-After` as seconds or an HTTP date (RFC 9110); None when absent or unreadable
    (a receiver's malformed header is ignored, not an error)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return timedelta(seconds=min(int(text), 10**9))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None  # (since Python 3.10 an unreadable date raises rather than returning None)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(moment - now, timedelta(0))


@dataclass(frozen=True)
class EndpointHealth:
    """What an endpoint's record becomes after an attempt: since when it has been failing
    (None: its last attempt succeeded), and whether it is to be disabled now."""

    failing_since: datetime | None
    disable: bool


def after_attempt(succeeded: bool, failing_since: datetime | None, now: datetime,
                  disable_after: timedelta) -> EndpointHealth:
    """An endpoint is disabled once every attempt for `disable_after` (a day by default) has
    failed: the clock starts at the first failure after a success and stops at any success."""
    if succeeded:
        return EndpointHealth(None, False)
    since = failing_since or now
    return EndpointHealth(since, now - since >= disable_after)


def succeeded(status: int | None) -> bool:
    """2xx is delivered; anything else (or no answer) is a failure to retry."""
    return status is not None and 200 <= status < 300


# -- secrets and signatures ----------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret (Standard Webhooks: base64 after the prefix)."""
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookInputError(f"a secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookInputError("the secret is not base64 after whsec_") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise WebhookInputError(f"the secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return key


def check_secret(secret: str | None, fmt: Format) -> str:
    """The secret to store: a fresh `whsec_` one when none is given; a given one must be a
    valid `whsec_` secret (Standard Webhooks), or for MLflow endpoints any 16-256 characters
    (MLflow signs with the secret's UTF-8 bytes, whatever they are)."""
    if not secret:
        return new_secret()
    if fmt == "mlflow":
        if not 16 <= len(secret) <= 256 or not secret.isprintable():
            raise WebhookInputError("an MLflow webhook secret is 16 to 256 printable characters")
        return secret
    secret_key(secret)
    return secret


def standard_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers: the signature is `v1,` + base64(HMAC-SHA256(key,
    `id.timestamp.body`))."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode()}


def mlflow_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """MLflow's webhook headers: the same construction, keyed by the secret's UTF-8 bytes."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return {"X-MLflow-Delivery-Id": message_id, "X-MLflow-Timestamp": str(timestamp),
            "X-MLflow-Signature": "v1," + base64.b64encode(digest).decode()}


def signed_headers(fmt: Format, secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    sign = mlflow_headers if fmt == "mlflow" else standard_headers
    return {"content-type": "application/json", **sign(secret, message_id, timestamp, body)}


# -- message bodies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One body for one endpoint: `message_id` is the idempotency key receivers see
    (`webhook-id`): the event id, so a retry or a replay of the same event carries the same."""

    message_id: uuid.UUID
    body: str


# MLflow's webhook events (entity.action) as the registry can tell them; the champion alias
# is the production stage.
MLFLOW_EVENTS: tuple[str, ...] = ("registered_model.created", "model_version.created",
                                  "model_version_alias.created", "model_version_alias.deleted")
CHAMPION_ALIAS = "champion"
_MLFLOW_IDS = uuid.UUID("3e0c8f0a-6f53-4a57-9a43-2d3c4c1c9b6e")


def mlflow_event_name(event: Any) -> str:
    """`entity.action` from MLflow's `{"entity": ..., "action": ...}` (either case) or a string."""
    if isinstance(event, Mapping):
        entity, action = event.get("entity"), event.get("action")
        if not isinstance(entity, str) or not isinstance(action, str):
            raise WebhookInputError("an event is {\"entity\": ..., \"action\": ...}")
        name = f"{entity.lower()}.{action.lower()}"
    elif isinstance(event, str):
        name = event.strip().lower()
    else:
        raise WebhookInputError("an event is {\"entity\": ..., \"action\": ...}")
    if name not in MLFLOW_EVENTS:
        raise WebhookInputError(f"unsupported MLflow webhook event {name!r}; supported: {', '.join(MLFLOW_EVENTS)}")
    return name


def mlflow_topics(events: Sequence[str]) -> tuple[str, ...]:
    """The registry topics that carry the given MLflow events."""
    topics = set()
    for name in events:
        topics.add("model.ingested" if name in ("registered_model.created", "model_version.created")
                   else "model.promoted" if name == "model_version_alias.created" else "model.demoted")
    return tuple(sorted(topics))


def mlflow_messages(topic: str, event: Mapping[str, Any], wanted: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The MLflow events (name, data) a registry event is, of those `wanted`: a new version
    is `model_version.created` (and, for version 1, `registered_model.created`); a version
    reaching production sets the champion alias, one leaving it deletes it."""
    data = event.get("data") or {}
    name, version = data.get("name"), data.get("version")
    out: list[tuple[str, dict[str, Any]]] = []
    if topic == "model.ingested":
        if version == 1:
            out.append(("registered_model.created", {"name": name, "tags": {}, "description": None}))
        artifact = data.get("artifact") or {}
        out.append(("model_version.created", {
            "name": name, "version": str(version), "source": artifact.get("uri"), "run_id": data.get("run_id"),
            "tags": {}, "description": None}))
    elif topic == "model.promoted" and data.get("to_stage") == "production":
        out.append(("model_version_alias.created", {"name": name, "alias": CHAMPION_ALIAS, "version": str(version)}))
    elif topic == "model.demoted" and data.get("from_stage") == "production":
        out.append(("model_version_alias.deleted", {"name": name, "alias": CHAMPION_ALIAS}))
    return [(n, d) for n, d in out if n in wanted]


def mlflow_body(name: str, data: Mapping[str, Any], at: datetime) -> str:
    entity, action = name.split(".")
    return json.dumps({"entity": entity, "action": action, "timestamp": at.isoformat(), "data": dict(data)},
                      separators=(",", ":"))


def messages_for(fmt: Format, mlflow_events: Sequence[str], topic: str, event_id: uuid.UUID,
                 raw: str, event: Mapping[str, Any], at: datetime) -> list[Message]:
    """What one endpoint is sent for one event: the CloudEvent exactly as the registry
    published it (its Ed25519 signature still checks) for standard endpoints; MLflow's shape,
    one message per MLflow event, for endpoints created through MLflow's API."""
    if fmt == "standard":
        return [Message(event_id, raw)]
    return [Message(event_id if index == 0 else uuid.uuid5(_MLFLOW_IDS, f"{event_id}/{name}"),
                    mlflow_body(name, data, at))
            for index, (name, data) in enumerate(mlflow_messages(topic, event, mlflow_events))]


def probe_message(fmt: Format, at: datetime) -> Message:
    """What `webhooks test` sends: a fresh id, a body that says it is a test."""
    message_id = uuid.uuid4()
    if fmt == "mlflow":
        return Message(message_id, mlflow_body("model_version.created", {
            "name": "example_model", "version": "1", "source": "s3://example/model", "run_id": None,
            "tags": {}, "description": "a test delivery from modelreg"}, at))
    return Message(message_id, json.dumps({"type": "webhook.test", "id": str(message_id),
                                           "time": at.isoformat(), "data": {"test": True}},
                                          separators=(",", ":")))
