"""The MLflow API's pure parts: filter and order-by syntax, stage and status mapping, the JSON
of MLflow's messages, credentials, artifact paths and error statuses (checked against MLflow's
own table)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import ERROR_CODE_TO_HTTP_STATUS
from mlflow.protos.model_registry_pb2 import GetModelVersion, GetRegisteredModel
from mlflow.utils.proto_json_utils import parse_dict

from services.api.mlflow import artifacts, filters, mapping
from services.api.mlflow.credentials import CredentialsError, token_of
from services.api.mlflow.errors import HTTP_STATUS, MlflowError
from services.api.mlflow.filters import MODEL_ATTRIBUTES, VERSION_ATTRIBUTES, Clause, FilterError

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------- filters


def test_filters_parse_names_likes_and_tags() -> None:
    text = "name LIKE 'fraud-%' AND tags.team = 'risk' and tags.`with space` != \"x\" AND name ILIKE '%Detect%'"
    assert filters.parse_filter(text, MODEL_ATTRIBUTES) == [
        Clause("attribute", "name", "LIKE", "fraud-%"), Clause("tag", "team", "=", "risk"),
        Clause("tag", "with space", "!=", "x"), Clause("attribute", "name", "ILIKE", "%Detect%")]
    assert filters.parse_filter("", MODEL_ATTRIBUTES) == [] and filters.parse_filter(None, MODEL_ATTRIBUTES) == []


def test_version_filters_take_lists_and_numbers() -> None:
    clauses = filters.parse_filter("run_id IN ('a', \"b\") AND version_number >= 3 AND source_path LIKE 's3://%'",
                                   VERSION_ATTRIBUTES)
    assert clauses == [Clause("attribute", "run_id", "IN", ("a", "b")),
                       Clause("attribute", "version_number", ">=", 3),
                       Clause("attribute", "source_path", "LIKE", "s3://%")]
    assert filters.parse_filter("run_id NOT IN ('a')", VERSION_ATTRIBUTES)[0].op == "NOT IN"


@pytest.mark.parametrize("text,says", [
    ("name", "incomplete"), ("name =", "value is missing"), ("owner = 'x'", "cannot search by 'owner'"),
    ("name = 'x' OR name = 'y'", "no OR"), ("name < 'x'", "operator < is not supported"),
    ("name = 'x' AND", "ends with AND"), ("name = x", "quoted string"), ("name = 'x", "cannot parse"),
])
def test_bad_filters_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(FilterError, match=says):
        filters.parse_filter(text, MODEL_ATTRIBUTES)


def test_version_number_must_be_a_number() -> None:
    with pytest.raises(FilterError, match="whole number"):
        filters.parse_filter("version_number = '3'", VERSION_ATTRIBUTES)


def test_like_is_sql_like() -> None:
    assert filters.like("fraud-%", "fraud-detector") and not filters.like("fraud-%", "Fraud-detector")
    assert filters.like("fraud-%", "Fraud-detector", ignore_case=True)
    assert filters.like("v_", "v1") and not filters.like("v_", "v12")
    assert filters.like("a.b", "a.b") and not filters.like("a.b", "axb")  # regex characters are literal


def test_matches_applies_every_clause() -> None:
    clauses = filters.parse_filter("name LIKE 'fraud%' AND tags.team = 'risk'", MODEL_ATTRIBUTES)
    assert filters.matches(clauses, {"name": "fraud-1", "tags": {"team": "risk"}})
    assert not filters.matches(clauses, {"name": "fraud-1", "tags": {"team": "ops"}})
    assert not filters.matches(clauses, {"name": "fraud-1", "tags": {}})
    assert not filters.matches(clauses, {"name": "churn", "tags": {"team": "risk"}})


def test_a_missing_tag_matches_only_not_equal() -> None:
    # MLflow's client adds this clause to every model search: models without the tag must match.
    clauses = filters.parse_filter("name = 'm' AND tag.`mlflow.prompt.is_prompt` != 'true'", MODEL_ATTRIBUTES)
    assert filters.matches(clauses, {"name": "m", "tags": {}})
    assert not filters.matches(clauses, {"name": "m", "tags": {"mlflow.prompt.is_prompt": "true"}})


def test_order_by_and_sort() -> None:
    orders = filters.parse_order_by(["last_updated_timestamp DESC"], ("name", "last_updated_timestamp"),
                                    [filters.Order("name", False)])
    assert orders == [filters.Order("last_updated_timestamp", True), filters.Order("name", False)]
    items = [{"name": "b", "last_updated_timestamp": 1}, {"name": "a", "last_updated_timestamp": 1},
             {"name": "c", "last_updated_timestamp": 2}, {"name": "d", "last_updated_timestamp": None}]
    assert [i["name"] for i in filters.sort(items, orders)] == ["d", "c", "a", "b"]
    with pytest.raises(FilterError, match="order by one of"):
        filters.parse_order_by(["owner"], ("name",), [])
    with pytest.raises(FilterError, match="COLUMN"):
        filters.parse_order_by(["name sideways"], ("name",), [])


# ---------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("stage,mlflow_stage", [("none", "None"), ("staging", "Staging"),
                                                ("production", "Production"), ("archived", "Archived")])
def test_stages_both_ways(stage: str, mlflow_stage: str) -> None:
    assert mapping.STAGE_TO_MLFLOW[stage] == mlflow_stage
    assert mapping.stage_from_mlflow(mlflow_stage) == stage == mapping.stage_from_mlflow(mlflow_stage.upper())


def test_an_unknown_stage_names_the_choices() -> None:
    with pytest.raises(ValueError, match="None, Staging, Production, Archived"):
        mapping.stage_from_mlflow("Canary")


def _row(**fields: object) -> dict[str, object]:
    return {"name": "fraud", "version": 3, "stage": "none", "status": "registered", "created_at": NOW,
            "updated_at": NOW, "tags": {"team": "risk"}, "reasons": [], "correlation_id": None, **fields}


def test_registration_status_follows_the_view() -> None:
    assert mapping.registration_status(None).status == mapping.PENDING
    assert mapping.registration_status(_row(status="ingested")).status == mapping.PENDING
    assert mapping.registration_status(_row(status="validated")).status == mapping.READY
    failed = mapping.registration_status(_row(status="rejected", reasons=[
        {"code": "missing_metadata", "message": "signature is required"}]))
    assert failed.status == mapping.FAILED and "missing_metadata: signature is required" in failed.message
    assert mapping.registration_status(_row(status="quarantined")).status == mapping.FAILED


def test_a_version_number_taken_by_another_registration_is_failed() -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    assert mapping.registration_status(_row(status="validated", correlation_id=mine), mine).status == mapping.READY
    taken = mapping.registration_status(_row(status="validated", correlation_id=theirs), mine)
    assert taken.status == mapping.FAILED and "taken by another registration" in taken.message


def test_model_version_json_parses_as_mlflow_s_message() -> None:
    row = _row(status="validated", stage="production", source_uri="s3://in/m.pkl", run_id="r1",
               registered_by="pipeline", mlflow_tags={"reviewed": "yes"}, mlflow_description="notes")
    message = GetModelVersion.Response()
    parse_dict({"model_version": mapping.model_version(row, aliases=["champion"])}, message)
    version = ModelVersion.from_proto(message.model_version)
    assert (version.name, version.version, version.current_stage, version.status) == ("fraud", "3", "Production",
                                                                                      "READY")
    assert version.tags == {"team": "risk", "reviewed": "yes"} and version.description == "notes"
    assert version.source == "s3://in/m.pkl" and version.aliases == ["champion"] and version.user_id == "pipeline"
    assert version.creation_timestamp == int(NOW.timestamp() * 1000)


def test_registered_model_json_parses_as_mlflow_s_message() -> None:
    model = {"name": "fraud", "created_at": NOW, "updated_at": NOW, "description": "d", "created_by": "p"}
    message = GetRegisteredModel.Response()
    parse_dict({"registered_model": mapping.registered_model(
        model, latest=[mapping.model_version(_row())], tags={"tier": "gold"},
        aliases={"champion": 2, "challenger": 3})}, message)
    parsed = RegisteredModel.from_proto(message.registered_model)
    assert parsed.name == "fraud" and parsed.tags == {"tier": "gold"} and parsed.description == "d"
    assert parsed.aliases == {"champion": "2", "challenger": "3"}
    assert [v.version for v in parsed.latest_versions] == ["3"]


def test_latest_per_stage() -> None:
    rows = [_row(version=1, stage="production"), _row(version=2, stage="none"), _row(version=4, stage="none"),
            _row(version=3, stage="staging")]
    assert [r["version"] for r in mapping.latest_per_stage(rows)] == [1, 3, 4]
    assert [r["version"] for r in mapping.latest_per_stage(rows, ["Production"])] == [1]


@pytest.mark.parametrize("text", ["x", "0", "-1", str(2**31), ""])
def test_bad_versions(text: str) -> None:
    with pytest.raises(ValueError):
        mapping.parse_version(text)


# ---------------------------------------------------------------------------- credentials


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_tokens_come_as_bearer_or_as_the_basic_password() -> None:
    assert token_of(None) is None
    assert token_of("Bearer mr_abc") == "mr_abc"
    assert token_of("bearer   mr_abc ") == "mr_abc"
    assert token_of(_basic("alice", "mr_abc")) == "mr_abc"
    assert token_of(_basic("", "mr_a:b")) == "mr_a:b"  # only the first colon separates


@pytest.mark.parametrize("header,says", [
    ("Basic !!!", "base64"), (_basic("alice", ""), "need a password"), ("Token mr_abc", "Bearer"),
    ("Bearer", "Bearer"), ("Basic " + base64.b64encode(b"no-colon").decode(), "need a password"),
])
def test_malformed_credentials_are_refused(header: str, says: str) -> None:
    with pytest.raises(CredentialsError, match=says):
        token_of(header)


# ---------------------------------------------------------------------------- artifacts and errors


def test_artifact_paths() -> None:
    assert artifacts.parse_path("models/fraud/3") == artifacts.ArtifactPath("fraud", 3, "")
    assert artifacts.parse_path("/models/fraud/3/data/model.pkl") == artifacts.ArtifactPath("fraud", 3,
                                                                                           "data/model.pkl")
    for bad in ("fraud/3", "models/fraud", "models/fraud/x", "models/fraud/3/../4/MLmodel", "runs/a/b"):
        with pytest.raises(ValueError):
            artifacts.parse_path(bad)


def test_children_of_a_prefix_are_one_level() -> None:
    keys = [("a/1/MLmodel", 10), ("a/1/model.pkl", 20), ("a/1/data/x.bin", 5), ("a/1/data/y.bin", 6)]
    assert artifacts.children(keys, "a/1/") == [
        {"path": "MLmodel", "is_dir": False, "file_size": 10}, {"path": "data", "is_dir": True},
        {"path": "model.pkl", "is_dir": False, "file_size": 20}]
    assert artifacts.children(keys, "a/1/data/") == [{"path": "x.bin", "is_dir": False, "file_size": 5},
                                                     {"path": "y.bin", "is_dir": False, "file_size": 6}]


def test_error_statuses_are_mlflow_s() -> None:
    for code, status in HTTP_STATUS.items():
        assert ERROR_CODE_TO_HTTP_STATUS[code] == status, code
        assert MlflowError(code, "m").status == status
    with pytest.raises(ValueError):
        MlflowError("NO_SUCH_CODE", "m")
