"""The web UI's approver view decides which buttons a version page shows, as a plain function:
approvers in scope get "request promotion" or "approve", everyone else none."""

from __future__ import annotations

from typing import Any

import pytest

from services.api.auth import Identity
from services.api.ui import approver_actions


def doc(stage: str = "staging", status: str = "validated", registered_by: str | None = "pipeline") -> dict[str, Any]:
    return {"name": "fraud-a", "version": 3, "stage": stage, "status": status, "registered_by": registered_by}


def gates(*failing: str, blocked: str | None = None) -> dict[str, Any]:
    listed = [{"gate": "suite:offline-eval", "passed": "suite:offline-eval" not in failing},
              {"gate": "threshold:auc", "passed": "threshold:auc" not in failing}]
    return {"blocked": blocked, "gates": listed}


BOB = Identity(1, "bob", "approver")


def labels(actions: dict[str, Any]) -> list[tuple[str, str]]:
    return [(b["to_stage"], b["label"]) for b in actions["buttons"]]


def test_an_approver_may_approve_a_staging_version_and_sees_the_failing_gates() -> None:
    shown = approver_actions(BOB, doc(), gates("threshold:auc"))
    assert labels(shown) == [("production", "Approve for production")]
    assert shown["note"] == "Gates failing: threshold:auc. Approving moves it anyway."
    assert approver_actions(BOB, doc(), gates())["note"] is None


def test_an_approver_may_request_promotion_of_a_validated_version_to_staging() -> None:
    assert labels(approver_actions(BOB, doc(stage="none"), gates())) == [("staging", "Request promotion to staging")]


@pytest.mark.parametrize("viewer", [None, Identity(2, "r", "reader"), Identity(3, "p", "publisher"),
                                    Identity(4, "q", "evaluator"), Identity(5, "alice", "approver", ("churn-*",))])
def test_readers_other_roles_and_approvers_of_other_models_see_nothing(viewer: Identity | None) -> None:
    assert approver_actions(viewer, doc(), gates()) == {"buttons": [], "note": None}


def test_an_admin_is_an_approver_too() -> None:
    assert labels(approver_actions(Identity(6, "root", "admin"), doc(), gates())) == \
        [("production", "Approve for production")]


@pytest.mark.parametrize("version,state,note", [
    (doc(registered_by="bob"), gates(), "You registered this version: another approver must approve it."),
    (doc(status="ingested"), gates(), "Not validated (ingested): it cannot be moved up."),
    (doc(status="rejected"), gates(), "Not validated (rejected): it cannot be moved up."),
    (doc(), gates(blocked="rolled_back"), "rolled back: it cannot be moved up."),
])
def test_no_button_where_promotion_would_refuse_and_the_page_says_why(version: dict[str, Any],
                                                                      state: dict[str, Any], note: str) -> None:
    assert approver_actions(BOB, version, state) == {"buttons": [], "note": note}


@pytest.mark.parametrize("stage", ["production", "archived"])
def test_nothing_to_move_up_from_production_or_archived(stage: str) -> None:
    assert approver_actions(BOB, doc(stage=stage), gates())["buttons"] == []
