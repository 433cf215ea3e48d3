"""`modelreg import mlflow`'s pure parts: names, stages, the per-version plan, the pattern check,
the credentials file, and promotion's `decide_import`."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.errors import UserError
from services.cli.mlflow_import import read_credentials
from services.cli.mlflow_import.plan import (
    Existing,
    GlobError,
    SourceVersion,
    check_glob,
    import_marker,
    map_names,
    plan_versions,
    registry_name,
    select_models,
    target_stages,
)
from shared.domain.promotion import decide_import
from shared.policy import Rule


def test_mlflow_names_become_lower_case_slugs() -> None:
    assert registry_name("Fraud Detector") == "fraud-detector"
    assert registry_name("churn_v2.final") == "churn_v2.final"
    assert registry_name("  !!  ") is None


def test_two_models_that_would_share_a_name_are_both_skipped() -> None:
    mapped, problems = map_names(["Fraud", "fraud", "churn", "???"])
    assert mapped == {"churn": "churn"}
    assert set(problems) == {"Fraud", "fraud", "???"}
    assert "'fraud'" in problems["Fraud"]


def test_patterns_select_case_sensitively_and_typos_are_refused() -> None:
    assert select_models(["fraud-a", "Fraud-b", "churn"], "fraud-*") == ["fraud-a"]
    assert select_models(["b", "a"], None) == ["a", "b"]
    assert check_glob("fraud-[ab]*") == "fraud-[ab]*"
    with pytest.raises(GlobError, match="never closes"):
        check_glob("fraud-[ab")
    with pytest.raises(GlobError, match="empty"):
        check_glob("  ")


def test_the_champion_alias_names_the_one_production_version() -> None:
    versions = [SourceVersion(1, "Production"), SourceVersion(2, "Staging", ("champion",)),
                SourceVersion(3, "Archived"), SourceVersion(4, "None", ("challenger",))]
    assert target_stages(versions, "champion") == {1: "none", 2: "production", 3: "none", 4: "none"}


def test_without_the_alias_the_newest_production_version_is_the_champion() -> None:
    versions = [SourceVersion(1, "Production"), SourceVersion(2, "Production"), SourceVersion(3, "Staging")]
    assert target_stages(versions, "champion") == {1: "none", 2: "production", 3: "staging"}


def _imported(name: str, version: int, stage: str, status: str = "validated") -> Existing:
    return Existing(stage, status, import_marker(name, version))


def test_a_first_import_copies_every_ready_version_and_asks_for_its_stage_crowning_last() -> None:
    versions = [SourceVersion(1, "None"), SourceVersion(2, "None", ("champion",)), SourceVersion(3, "Staging"),
                SourceVersion(4, "None", ready=False)]
    steps = plan_versions("Fraud", versions, {}, "champion")
    assert [(s.version, s.register, s.request) for s in steps] == [
        (1, True, "none"), (3, True, "staging"), (4, False, None), (2, True, "production")]


def test_a_re_run_copies_only_new_versions_and_follows_stages_only_upwards() -> None:
    versions = [SourceVersion(1, "None"), SourceVersion(2, "Staging"), SourceVersion(3, "None", ("champion",)),
                SourceVersion(4, "None")]
    existing = {1: _imported("m", 1, "production"),  # the champion before: MLflow moved the alias on
                2: _imported("m", 2, "none"),        # staged in MLflow since the first import
                3: _imported("m", 3, "none")}
    steps = {s.version: s for s in plan_versions("m", versions, existing, "champion")}
    assert (steps[1].register, steps[1].request) == (False, None)
    assert (steps[2].register, steps[2].request) == (False, "staging")
    assert (steps[3].register, steps[3].request) == (False, "production")
    assert (steps[4].register, steps[4].request) == (True, "none")


def test_versions_here_that_were_not_imported_or_were_rejected_are_left_alone() -> None:
    versions = [SourceVersion(1, "Production"), SourceVersion(2, "Staging")]
    existing = {1: Existing("none", "validated", None), 2: _imported("m", 2, "none", status="rejected")}
    steps = {s.version: s for s in plan_versions("m", versions, existing, "champion")}
    assert (steps[1].register, steps[1].request) == (False, None)
    assert "not imported" in steps[1].note
    assert (steps[2].register, steps[2].request) == (False, None)


_RULE = Rule(match="*", approvers=("alice", "bob"))


def test_an_approver_s_import_waits_for_validation_then_applies_without_gates() -> None:
    waiting = decide_import(_RULE, actor="alice", to_stage="production", stage="none", validated=False,
                            blocked=None)
    assert waiting.outcome == "wait"
    applied = decide_import(_RULE, actor="alice", to_stage="production", stage="none", validated=True,
                            blocked=None)
    assert applied.outcome == "apply"


@pytest.mark.parametrize(("actor", "blocked", "stage", "to_stage", "registered_by", "why"), [
    ("mallory", None, "none", "production", None, "not an approver"),
    ("alice", "rejected", "none", "production", None, "rejected"),
    ("alice", "quarantined", "staging", "staging", None, "quarantined"),
    ("alice", None, "none", "archived", None, "never archives"),
    ("alice", None, "archived", "production", None, "archived"),
    ("alice", None, "none", "production", "alice", "separation of duties"),
])
def test_imports_are_refused_for_non_approvers_and_unsafe_versions(
        actor: str, blocked: str | None, stage: str, to_stage: str, registered_by: str | None, why: str) -> None:
    decision = decide_import(_RULE, actor=actor, to_stage=to_stage, stage=stage, validated=True,
                             blocked=blocked, registered_by=registered_by)
    assert decision.outcome == "refuse"
    assert why in decision.detail


def test_the_ops_credentials_file_takes_what_stack_credentials_prints(tmp_path: Path) -> None:
    path = tmp_path / "ops.env"
    path.write_text("# ops\nexport KAFKA_SASL_USERNAME=ops\nexport KAFKA_SASL_PASSWORD='p w$x'\n\n")
    assert read_credentials(path) == {"KAFKA_SASL_USERNAME": "ops", "KAFKA_SASL_PASSWORD": "p w$x"}
    path.write_text("export PATH=/bin\n")
    with pytest.raises(UserError, match="KAFKA_NAME=VALUE"):
        read_credentials(path)
    with pytest.raises(UserError, match="No such file"):
        read_credentials(tmp_path / "missing.env")
