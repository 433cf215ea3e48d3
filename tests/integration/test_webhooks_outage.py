"""A webhook receiver down for a whole minute, on the retry schedule the services are deployed
with (5 s doubling to 5 minutes; MODELREG_WEBHOOKS_RETRY_* left at their defaults): once it is
back it verifies (standardwebhooks) every promotion of its glob exactly once, each model's in
the order promotion published them, and the delivery log holds the minute of failed attempts
at the scheduled delays. Slow (a real minute of outage): `make test-slow`.

Its own webhooks service (the same consumer group as test_webhooks' short-schedule one, which
is stopped with its module before this one starts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from shared.runtime import ServiceApp
from shared.settings import Settings
from shared.webhooks import logic, store
from tests.integration.conftest import as_principal
from tests.integration.test_pipeline import QA, promoted, register
from tests.integration.test_webhooks import ALLOW, Receiver, _all_delivered, _attempts, _endpoint
from tests.support import Kafka, eventually, settings_for, unique_name

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 60


@pytest.fixture(scope="module")
async def deployed_webhooks(settings: Settings, kafka: Kafka, pipeline: Any) -> AsyncIterator[Settings]:
    from services.webhooks.app import create_app

    deployed = settings_for(settings, {"MODELREG_WEBHOOKS_ALLOW_NETWORKS": ALLOW})
    assert deployed.webhooks_retry_max_seconds == Settings.model_fields["webhooks_retry_max_seconds"].default
    app: ServiceApp = create_app(as_principal(deployed, "webhooks"))
    await app.start()
    yield deployed
    await app.stop()


async def test_a_receiver_down_for_a_minute_gets_every_promotion_once_in_order_per_model(
        settings: Settings, kafka: Kafka, pipeline: Any, deployed_webhooks: Settings, db: asyncpg.Pool) -> None:
    glob = unique_name("life")  # the policy's life-* rule promotes on the QA result
    names = [f"{glob}-a", f"{glob}-b"]
    receiver = Receiver()
    await receiver.start()
    path = f"/outage/{glob}"
    endpoint = await _endpoint(db, settings, receiver, path, topics=["model.promoted"], models=[f"{glob}-*"])
    qa = [asyncio.create_task(QA(kafka, name, {1: {"auc": 0.92}, 2: {"auc": 0.95}}).run()) for name in names]
    try:
        for name in names:
            await register(settings, kafka, name, 1)
        for name in names:
            await kafka.wait_for("model.promoted", promoted(name, 1, "production"), timeout=120)
        await eventually(lambda: len(receiver.bodies(path)) == 4, timeout=60)

        await receiver.stop()
        for name in names:
            await register(settings, kafka, name, 2)
        for name in names:
            await kafka.wait_for("model.promoted", promoted(name, 2, "production"), timeout=120)
        # Down for a minute from the moment both models' deliveries are failing.
        await eventually(lambda: _failing_for_every_model(db, endpoint.id, names), timeout=60)
        await asyncio.sleep(OUTAGE_SECONDS)
        assert len(receiver.bodies(path)) == 4  # nothing got through while it was down
        await receiver.start()
        # The schedule's next attempt comes within about 35 s of the receiver's return
        # (logic.wait_after_outage); the rest follow at once.
        await eventually(lambda: len(receiver.bodies(path)) >= 8, timeout=120)
        await eventually(lambda: _all_delivered(db, endpoint.id), timeout=60)
    finally:
        for task in qa:
            task.cancel()
        await receiver.stop()

    received = receiver.bodies(path)
    ids = [e["id"] for e in received]
    assert len(ids) == len(set(ids)) == 8 and receiver.forged == 0  # every one once, every one verified
    for name in names:
        on_kafka = [s.event["id"] for s in kafka.matching("model.promoted", lambda s, n=name: s.data["name"] == n)]
        assert [e["id"] for e in received if e["data"]["name"] == name] == on_kafka
        assert [(e["data"]["version"], e["data"]["to_stage"]) for e in received if e["data"]["name"] == name] == \
            [(1, "staging"), (1, "production"), (2, "staging"), (2, "production")]

    # The log: per model, refused connections across the minute, each retry scheduled by the
    # deployed schedule (doubling from 5 s, each stretched by at most a quarter).
    schedule = logic.RetrySchedule(timedelta(seconds=deployed_webhooks.webhooks_retry_first_seconds),
                                   timedelta(seconds=deployed_webhooks.webhooks_retry_max_seconds))
    attempts = await db.fetch(
        """SELECT d.model, a.attempt, a.attempted_at, a.status_code, a.error, a.retry_at FROM webhook_attempts a
           JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1 ORDER BY a.id""", endpoint.id)
    for name in names:
        failed = [a for a in attempts if a["model"] == name and a["status_code"] is None]
        assert len(failed) >= 3 and all(a["error"] and a["retry_at"] for a in failed)
        # (the last failure's retry was due once the receiver was back: at least the minute on)
        assert (failed[-1]["retry_at"] - failed[0]["attempted_at"]).total_seconds() >= OUTAGE_SECONDS - 2
        for a in failed:
            delay = a["retry_at"] - a["attempted_at"]
            assert logic.retry_delay(a["attempt"], schedule) <= delay <= logic.retry_delay(
                a["attempt"], schedule, jitter=0.999), (a["attempt"], delay)
    assert [a["status_code"] for a in attempts].count(204) == 8
    rows = await store.list_deliveries(db, endpoint_id=endpoint.id, with_attempts=True)
    assert sum(len(r["attempt_log"]) for r in rows) == len(attempts) > 8


async def _failing_for_every_model(db: asyncpg.Pool, endpoint_id: Any, names: list[str]) -> bool:
    return {a["model"] for a in await _attempts(db, endpoint_id) if a["status_code"] is None} == set(names)
