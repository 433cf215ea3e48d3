"""The webhooks service's chores, their pure parts: an endpoint change's audit record, and
which deliveries are old enough to prune."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.webhooks.maintenance import change_audit, change_row, prune_before
from services.webhooks.worker import disabled_audit
from shared.events import UNKNOWN_MODEL, RegistryAudit, new_event
from shared.webhooks import store
from shared.webhooks.store import EndpointChange

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _change(action: str, **evidence: object) -> EndpointChange:
    return EndpointChange(7, uuid.UUID(int=5), action, "ops/alice",
                          {"name": "deploy", "url": "https://hooks.example/x", "topics": ["model.promoted"],
                           "models": ["fraud-*"], "stages": [], "format": "standard", **evidence}, AT)


@pytest.mark.parametrize(("action", "verb"), [("webhook_created", "created"), ("webhook_deleted", "deleted")])
def test_an_endpoint_change_is_audited_about_no_model_with_its_actor(action: str, verb: str) -> None:
    data = change_audit(_change(action))
    assert (data.action, data.name, data.actor) == (action, UNKNOWN_MODEL, "ops/alice")
    assert data.reason == f"webhook endpoint {uuid.UUID(int=5)} {verb} by ops/alice"
    assert data.evidence["endpoint_id"] == str(uuid.UUID(int=5)) and data.evidence["changed_at"] == AT.isoformat()
    assert data.evidence["models"] == ["fraud-*"] and data.evidence["url"] == "https://hooks.example/x"
    new_event(RegistryAudit, data, source="modelreg/webhooks")  # a valid event of the contract


def test_a_secret_never_reaches_the_audit_record() -> None:
    assert "secret" not in change_audit(_change("webhook_created", secret="whsec_abc")).evidence


def test_an_endpoints_audit_records_share_one_key_so_they_stay_in_order() -> None:
    # Keyless records are spread over the audit topic's partitions, and a deletion could be
    # written to the audit log before the creation it follows.
    created, deleted = change_row(_change("webhook_created")), change_row(_change("webhook_deleted"))
    claimed = store.Claimed(3, uuid.UUID(int=5), uuid.uuid4(), "{}", "event", 4, "https://hooks.example/x",
                            "whsec_abc", "standard")
    assert created.key is not None and created.key == deleted.key == disabled_audit(claimed, "failing").key
    other = change_row(EndpointChange(8, uuid.UUID(int=6), "webhook_created", "ops/alice", {}, AT))
    assert other.key != created.key


def test_deliveries_finished_before_the_keep_time_are_pruned() -> None:
    assert prune_before(AT, timedelta(days=30)) == datetime(2026, 10, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("now", "keep"), [(datetime(2026, 11, 30), timedelta(days=30)), (AT, timedelta(0))])
def test_prune_before_refuses_a_naive_clock_or_no_keep_time(now: datetime, keep: timedelta) -> None:
    with pytest.raises(ValueError):
        prune_before(now, keep)
