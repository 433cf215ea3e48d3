"""The documents the API, the UI and the people's CLI show, built from the read model.

No HTTP here: `db` is an asyncpg pool or connection, and a missing model or version raises
`NotFound` with a message for people (the API answers 404, the CLI exits 1).
"""

from __future__ import annotations

from typing import Any

from shared.policy import Policy

from . import explain, queries
from .queries import Db


class NotFound(LookupError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def artifact_doc(row: dict[str, Any]) -> dict[str, Any]:
    return {"uri": row.get("artifact_uri"), "sha256": row.get("sha256"), "size_bytes": row.get("size_bytes"),
            "format": row.get("format"), "source_uri": row.get("source_uri"), "archive_uri": row.get("archive_uri"),
            "archived": row.get("stage") == "archived"}


async def version_row(db: Db, name: str, version: int) -> dict[str, Any]:
    row = await queries.get_version(db, name, version)
    if row is None:
        if await queries.get_model(db, name) is None:
            raise NotFound(f"no model named {name!r}")
        raise NotFound(f"model {name!r} has no version {version}")
    return row


async def model_document(db: Db, policy: Policy, name: str) -> dict[str, Any]:
    """A model, each version with its key metrics, and the policy rule that applies."""
    model = await queries.get_model(db, name)
    if model is None:
        raise NotFound(f"no model named {name!r}")
    versions = await queries.list_versions(db, name)
    evaluations = await queries.evaluations(db, name)
    rule = policy.rule_for(name)
    by_version: dict[int, list[dict[str, Any]]] = {}
    for e in evaluations:
        by_version.setdefault(e["version"], []).append(e)
    registered = {k for v in versions for k in (v["metrics"] or {})}
    return {**model, "policy_revision": policy.revision, "rule": rule.to_dict(),
            "chart_metric": explain.champion_metric(rule, registered),
            "versions": [{**v, "is_champion": v["version"] == model["champion"],
                          "key_metrics": explain.key_metrics(rule, v, by_version.get(v["version"], []))}
                         for v in versions]}


async def version_document(db: Db, name: str, version: int) -> dict[str, Any]:
    row = await version_row(db, name, version)
    model = await queries.get_model(db, name)
    return {**row, "is_champion": bool(model and model["champion"] == version), "artifact": artifact_doc(row),
            "evaluations": await queries.evaluations(db, name, version),
            "stage_history": await queries.stage_changes(db, name, version)}


async def explanation(db: Db, policy: Policy, name: str, version: int) -> dict[str, Any]:
    """The policy's gates for one version, judged against the current champion."""
    row = await version_row(db, name, version)
    model = await queries.get_model(db, name)
    champion = model["champion"] if model else None
    evaluations = await queries.evaluations(db, name)
    mine = [e for e in evaluations if e["version"] == version]
    theirs = [e for e in evaluations if e["version"] == champion] if champion is not None else []
    changes = await queries.stage_changes(db, name, version)
    return explain.explain(policy.rule_for(name), revision=policy.revision, version=row, evaluations=mine,
                           changes=changes, champion_version=champion, champion_evaluations=theirs)
