"""Replay's signature checks (services/audit/authenticity.py): in the worker process and inline,
each message judged as `Keyring.event_problem` judges it, in order. No servers."""

from __future__ import annotations

import json

import pytest

from services.audit import authenticity
from services.audit.authenticity import SignatureChecks
from shared import keys
from shared.events import RegistryAudit, RegistryAuditData, new_event


@pytest.fixture
def signing(tmp_path):
    signing_keys = keys.ensure_service_keys(tmp_path / "keys")
    return signing_keys, keys.Keyring.load(keys.write_keyring(tmp_path / "keys"))


def messages(signing_keys: dict[str, keys.SigningKey]) -> tuple[list[bytes | None], list[bool]]:
    """Messages of every kind replay meets, and whether each is forged."""
    record = new_event(RegistryAudit, RegistryAuditData(action="promoted", name="m", version=1, from_stage="staging",
                                                        to_stage="production", actor="modelreg/promotion"),
                       source="modelreg/promotion")
    genuine = signing_keys["promotion"].sign_event_bytes(record.to_json())
    tampered = json.loads(genuine)
    tampered["data"]["version"] = 2
    stranger = keys.SigningKey.generate("promotion").sign_event_bytes(record.to_json())
    # Too deep to canonicalise (the rebuild refuses it unparsed; the check must not fail on it).
    deep = json.loads(genuine)
    deep["data"] = json.loads("[" * 800 + "]" * 800)
    return ([genuine, record.to_json(), json.dumps(tampered).encode(), stranger, b"not json", b"[1, 2]", None,
             json.dumps(deep).encode(), signing_keys["audit"].sign_event_bytes(record.to_json()), genuine],
            [False, True, True, True, True, True, True, True, False, False])


def test_the_worker_judges_each_message_as_the_keyring_does(signing, monkeypatch) -> None:
    signing_keys, keyring = signing
    values, expected = messages(signing_keys)
    monkeypatch.setattr(authenticity, "_cores", lambda: 2)
    with SignatureChecks(keyring) as checks:
        assert checks._pool is not None, "a core to spare: the checks run in a worker"  # noqa: SLF001
        assert checks.submit(values).result(timeout=60) == expected
        assert checks.submit(values[::-1]).result(timeout=60) == expected[::-1]  # the order is kept
        assert checks.submit([]).result(timeout=60) == []


def test_on_one_core_the_checks_run_inline(signing, monkeypatch) -> None:
    signing_keys, keyring = signing
    values, expected = messages(signing_keys)
    monkeypatch.setattr(authenticity, "_cores", lambda: 1)
    with SignatureChecks(keyring) as checks:
        assert checks._pool is None  # noqa: SLF001
        assert checks.submit(values).result() == expected


async def test_a_worker_that_dies_leaves_the_checks_to_this_process(signing, monkeypatch) -> None:
    signing_keys, keyring = signing
    values, expected = messages(signing_keys)
    monkeypatch.setattr(authenticity, "_cores", lambda: 2)
    with SignatureChecks(keyring) as checks:
        assert await checks.outcome(checks.submit(values), values) == expected  # the worker is up
        pool = checks._pool  # noqa: SLF001
        assert pool is not None
        for process in list(pool._processes.values()):  # noqa: SLF001 - killed as the OOM killer would
            process.kill()
            process.join()
        assert await checks.outcome(checks.submit(values), values) == expected
        assert checks._pool is None  # noqa: SLF001 - the rest of the replay checks inline
        assert await checks.outcome(checks.submit(values), values) == expected


def test_a_record_without_a_canonical_form_is_read_and_judged_later() -> None:
    """Parsed before its signature is known: a forged or repeated record whose content the chain
    cannot hash must not stop the replay (it is skipped); only a record kept needs a digest."""
    from services.audit.replay import _read

    record = new_event(RegistryAudit, RegistryAuditData(action="promoted", name="m", version=1,
                                                        actor="modelreg/promotion"), source="modelreg/promotion")
    event = json.loads(record.to_json())
    event["time"] = "0001-01-01T00:00:00+01:00"  # before year 1 in UTC: no timestamp to hash
    read = _read(0, 7, json.dumps(event).encode())
    assert read is not None
    audit_record, where = read
    assert (where.partition, where.offset, where.digest) == (0, 7, b"")
    assert _read(0, 8, record.to_json())[1].digest  # a record that has one
    assert _read(0, 9, b"not an event") is None
