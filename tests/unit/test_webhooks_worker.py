"""The delivery worker's bookkeeping after an attempt (services/webhooks/worker.py), with the
store replaced by a fake: what it schedules, when it disables, what it audits."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.webhooks import worker
from services.webhooks.sender import Outcome
from shared.webhooks import logic, store

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SCHEDULE = logic.RetrySchedule(first=timedelta(seconds=2), cap=timedelta(seconds=60))


class FakeStore:
    def __init__(self, failing_since: datetime | None = None) -> None:
        self.failing_since = failing_since
        self.recorded: list[dict[str, Any]] = []

    async def endpoint_failing_since(self, pool: Any, endpoint_id: uuid.UUID) -> datetime | None:
        return self.failing_since

    async def record_attempt(self, pool: Any, claimed: store.Claimed, attempt: store.Attempt, **kwargs: Any) -> None:
        self.recorded.append({"attempt": attempt, **kwargs})


class FakeSender:
    timeout = type("T", (), {"total": 2.0})()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore()
    monkeypatch.setattr(store, "endpoint_failing_since", fake.endpoint_failing_since)
    monkeypatch.setattr(store, "record_attempt", fake.record_attempt)
    monkeypatch.setattr(worker.random, "random", lambda: 0.0)  # no jitter
    return fake


def _worker() -> worker.DeliveryWorker:
    return worker.DeliveryWorker(None, FakeSender(), schedule=SCHEDULE, disable_after=timedelta(hours=24))  # type: ignore[arg-type]


def _claimed(kind: str = "event", attempts: int = 0) -> store.Claimed:
    return store.Claimed(7, uuid.uuid4(), uuid.uuid4(), "{}", kind, attempts, "https://hooks.example/x",
                         logic.new_secret(), "standard")


def _outcome(status: int | None, retry_after: str | None = None, error: str | None = None) -> Outcome:
    return Outcome(status, 12.5, error, None, retry_after, NOW)


async def test_a_delivered_attempt_stops_the_failure_clock(fake: FakeStore) -> None:
    fake.failing_since = NOW - timedelta(hours=3)
    await _worker()._record(_claimed(), _outcome(204))
    [row] = fake.recorded
    assert row["delivered"] and row["retry_at"] is None and row["endpoint_failing_since"] is None
    assert row["disable_reason"] is None and row["on_disable"] == []
    assert row["attempt"].status_code == 204 and row["attempt"].latency_ms == 12.5


async def test_a_failure_is_retried_on_the_schedule(fake: FakeStore) -> None:
    await _worker()._record(_claimed(attempts=2), _outcome(500, error="HTTP 500"))  # the third failure
    [row] = fake.recorded
    assert not row["delivered"] and row["retry_at"] == NOW + timedelta(seconds=8)
    assert row["endpoint_failing_since"] == NOW and row["disable_reason"] is None


async def test_retry_after_pushes_the_retry_back(fake: FakeStore) -> None:
    await _worker()._record(_claimed(), _outcome(503, retry_after="30", error="HTTP 503"))
    assert fake.recorded[0]["retry_at"] == NOW + timedelta(seconds=30)


async def test_a_test_is_tried_once_and_never_disables(fake: FakeStore) -> None:
    fake.failing_since = NOW - timedelta(days=3)
    await _worker()._record(_claimed(kind="test"), _outcome(None, error="ConnectionRefusedError"))
    [row] = fake.recorded
    assert row["retry_at"] is None and row["disable_reason"] is None and row["on_disable"] == []


async def test_a_day_of_failures_disables_the_endpoint_with_an_audit_record(fake: FakeStore) -> None:
    fake.failing_since = NOW - timedelta(hours=24)
    claimed = _claimed(attempts=40)
    await _worker()._record(claimed, _outcome(None, error="no answer within 2s"))
    [row] = fake.recorded
    assert row["retry_at"] is None  # nothing more is sent to a disabled endpoint
    assert row["disable_reason"].startswith("every attempt failed since 2026-11-29T12:00:00Z")
    assert "no answer within 2s" in row["disable_reason"]
    [audit] = row["on_disable"]
    event = json.loads(audit.value)
    assert (audit.topic, event["data"]["action"], event["data"]["name"]) == ("registry.audit", "webhook_disabled",
                                                                             "_unknown")
    assert event["data"]["evidence"] == {"endpoint_id": str(claimed.endpoint_id), "url": claimed.url}
    assert "secret" not in audit.value.decode() and claimed.secret not in audit.value.decode()
