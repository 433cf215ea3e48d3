"""Creating and checking endpoints, and waiting for a test: what the CLI and the API share.

Sending stays with the service's delivery worker: a test or a replay asked for here is a row
the worker picks up, so every request to a receiver goes through one SSRF guard and one log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from shared.settings import Settings

from . import logic, ssrf, store
from .logic import Format, WebhookInputError

NAME_MAX = 128
DESCRIPTION_MAX = 1000


async def check_url(url: str, settings: Settings) -> str:
    """The URL, or WebhookInputError: well-formed, and reaching no address the SSRF guard
    refuses (its name resolved now; the worker checks again at every connect)."""
    try:
        ssrf.check_url(url)
    except ValueError as exc:
        raise WebhookInputError(f"url: {exc}") from None
    refusal = await ssrf.resolve_refusal(url, ssrf.parse_networks(settings.webhooks_allow_networks))
    if refusal is not None:
        raise WebhookInputError(f"url: {refusal} (MODELREG_WEBHOOKS_ALLOW_NETWORKS lists networks that may be "
                                "reached anyway)")
    return url


async def create(conn: Any, settings: Settings, *, url: str, created_by: str, name: str | None = None,
                 description: str | None = None, topics: Sequence[str] = (), models: Sequence[str] = (),
                 stages: Sequence[str] = (), secret: str | None = None, fmt: Format = "standard",
                 mlflow_events: Sequence[str] = (), active: bool = True) -> store.Endpoint:
    """A checked endpoint, stored; WebhookInputError names what is wrong."""
    name = (name or url).strip()[:NAME_MAX]
    if description is not None and len(description) > DESCRIPTION_MAX:
        raise WebhookInputError(f"description: at most {DESCRIPTION_MAX} characters")
    if fmt == "mlflow":
        mlflow_events = tuple(dict.fromkeys(logic.mlflow_event_name(e) for e in mlflow_events))
        if not mlflow_events:
            raise WebhookInputError("events: name at least one MLflow event")
        topics = logic.mlflow_topics(mlflow_events)
    subscription = logic.check_subscription(topics, models, stages)
    secret = logic.check_secret(secret, fmt)
    await check_url(url, settings)
    return await store.create_endpoint(conn, name=name, url=url, description=description, secret=secret, fmt=fmt,
                                       subscription=subscription, mlflow_events=mlflow_events,
                                       created_by=created_by, active=active)


async def send_test(conn: Any, endpoint: store.Endpoint, *, requested_by: str, wait_seconds: float,
                    poll_seconds: float = 0.2) -> tuple[int, dict[str, Any] | None]:
    """Ask the worker to send a test message; its delivery id, and the delivery once tried
    (None if the worker did not try it within `wait_seconds`: is the webhooks service running?)."""
    delivery_id = await store.request_test(conn, endpoint.id, logic.probe_message(endpoint.format, datetime.now(UTC)),
                                           requested_by=requested_by)
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        done = await store.finished(conn, delivery_id)
        if done is not None or asyncio.get_running_loop().time() >= deadline:
            return delivery_id, done
        await asyncio.sleep(poll_seconds)


def parse_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise WebhookInputError(f"{text!r} is not a webhook id (a UUID, as `webhooks list` shows)") from None
