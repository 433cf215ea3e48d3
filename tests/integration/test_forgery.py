"""Forged events change nothing: with the broker's ACLs bypassed (the tests' producer), an
unsigned record, a record signed by a key that may not sign its type, and a real record altered
after signing are each dead-lettered as `forged` by the service that reads them, and the
registry keeps serving the honest champion."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest
from cryptography.exceptions import InvalidSignature

from services.api.app import ApiService
from shared.events import ModelValidated, ModelValidatedData, RegistryAudit, RegistryAuditData, new_event
from shared.keys import Keyring
from shared.settings import Settings
from tests.integration.test_pipeline import QA, promoted, register
from tests.support import Kafka, eventually, for_model, signed, unique_name


async def test_forged_records_are_dead_lettered_and_the_champion_stays(
        settings: Settings, kafka: Kafka, pipeline, db: asyncpg.Pool) -> None:
    name = unique_name("life-honest")  # a rule with thresholds (tests/policy.yaml)
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.95}}).run())
    try:
        await register(settings, kafka, name, 1)
        [real] = await kafka.wait_for("model.promoted", promoted(name, 1, "production"))
    finally:
        qa.cancel()
    keyring = Keyring.load(settings.keyring_file)
    assert keyring.event_problem(real.event) is None, "a real model.promoted verifies with the keyring"
    # Who registered it is what the broker's ACLs say (a pipeline), not the `source` it claimed.
    [ingested] = kafka.matching("registry.audit", lambda s: for_model(name, 1)(s) and s.data["action"] == "ingested")
    assert ingested.data["evidence"]["sent_by"] == "acl:pipeline"
    assert keyring.service_of(real.event["signingkey"]) == "promotion"

    # 1. The attack from the issue: audit records claiming v2 went to production, unsigned.
    unsigned = new_event(RegistryAudit, RegistryAuditData(
        action="promoted", name=name, version=2, from_stage="staging", to_stage="production",
        actor="modelreg/promotion", reason="forged"), source="modelreg/promotion")
    await kafka.publish_raw("registry.audit", unsigned.to_json(), key=name)
    # 2. A real key, but not one that may sign its type: ingest cannot vouch for a validation.
    wrong_key = new_event(ModelValidated, ModelValidatedData(name=name, version=1, checks=[]),
                          source="modelreg/validation")
    await kafka.publish_raw("model.validated", signed(settings, wrong_key, service="ingest"), key=name)
    # 3. A real, signed model.promoted with one field changed afterwards.
    tampered = dict(real.event, id=str(uuid.uuid4()), data=dict(real.data, version=3))
    await kafka.publish_raw("model.promoted", json.dumps(tampered).encode(), key=name)

    letters = await kafka.wait_for("registry.dlq", lambda s: s.key == name and s.data["error"]["kind"] == "forged",
                                   count=3)
    by_topic = {s.data["original_topic"]: s for s in letters}
    assert set(by_topic) == {"registry.audit", "model.validated", "model.promoted"}
    assert by_topic["registry.audit"].data["service"] == "audit"
    assert by_topic["registry.audit"].data["error"]["message"] == "the event is not signed"
    assert "may not sign 'model.validated'" in by_topic["model.validated"].data["error"]["message"]
    assert by_topic["model.validated"].data["service"] == "promotion"
    assert "does not match" in by_topic["model.promoted"].data["error"]["message"]
    assert by_topic["model.promoted"].data["service"] == "archival"
    await kafka.wait_for("registry.audit", lambda s: for_model(name)(s) and s.data["action"] == "dead_lettered",
                         count=3)

    # The read side never saw the forgeries: v1 is the champion, there is no v2 or v3.
    async def champion() -> list[tuple[int, str]]:
        return [(r["version"], r["stage"]) for r in await db.fetch(
            "SELECT version, stage FROM view_versions WHERE name = $1 ORDER BY version", name)]
    assert await eventually(champion) == [(1, "production")]
    assert not await db.fetchval("SELECT count(*) FROM audit_log WHERE name = $1 AND reason = 'forged'", name)



def readme_snippet(marker: str) -> str:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split(marker, 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


async def test_a_deployment_system_verifies_model_promoted_with_the_published_keyring(
        settings: Settings, kafka: Kafka, pipeline, api_service: ApiService) -> None:
    """The README's few lines, run as written against the running API's JWKS."""
    name = unique_name("life-deploy")
    qa = asyncio.create_task(QA(kafka, name, {1: {"auc": 0.95}}).run())
    try:
        await register(settings, kafka, name, 1)
        [real] = await kafka.wait_for("model.promoted", promoted(name, 1, "production"))
    finally:
        qa.cancel()
    namespace: dict = {"REGISTRY": api_service.url}
    await asyncio.to_thread(exec, readme_snippet("<!-- verify-promoted -->"), namespace)
    verified = namespace["verified"]

    assert verified(real.value)["data"]["version"] == 1
    tampered = json.loads(real.value)
    tampered["data"]["to_stage"] = "staging"
    with pytest.raises(InvalidSignature):
        verified(json.dumps(tampered).encode())
    [ingested] = kafka.matching("model.ingested", for_model(name, 1))
    relabelled = dict(json.loads(ingested.value), type="model.promoted")  # ingest's key, wrong type
    with pytest.raises(ValueError, match="ingest may not sign model.promoted"):
        verified(json.dumps(relabelled).encode())
