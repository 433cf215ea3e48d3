"""Signed checkpoints of the audit chain (services/audit/checkpoint.py): pure, no servers."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from services.audit import checkpoint as cp
from services.audit.chain import TRUNCATED, AuditRecord, ChainHead, chain
from services.audit.checkpointer import CheckpointObjects
from shared import keys

NOW = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    signing_keys = keys.ensure_service_keys(directory, ["audit", "promotion"])
    return signing_keys, keys.Keyring.load(keys.write_keyring(directory, ["audit", "promotion"]))


def records(count: int, start: int = 0) -> list[AuditRecord]:
    return [AuditRecord(event_id=uuid.uuid4(), action="promoted", name="fraud", version=i + 1, actor="a",
                        source="modelreg/promotion", occurred_at=NOW + timedelta(seconds=i),
                        evidence={"i": i}) for i in range(start, start + count)]


def audit(rows, head, checkpoints):
    check = cp.CheckpointAudit(checkpoints)
    for row in rows:
        check.feed(row)
    return check.finish(head)


def test_a_checkpoint_verifies_and_survives_json(signing):
    signing_keys, keyring = signing
    _, head = chain(records(5))
    signed = cp.sign(signing_keys["audit"], head, NOW)
    assert cp.authenticity_problem(signed, keyring) is None
    again = cp.Checkpoint.from_json(signed.to_json())
    assert again == signed and again.key == "checkpoints/00000000000000000005.json"


def test_only_the_audit_writers_key_makes_an_authentic_checkpoint(signing):
    signing_keys, keyring = signing
    _, head = chain(records(3))
    signed = cp.sign(signing_keys["audit"], head, NOW)
    moved = dataclasses.replace(signed, records=2)
    assert "does not match" in cp.authenticity_problem(moved, keyring)
    promotion_key = signing_keys["promotion"]
    forged = dataclasses.replace(signed, kid=promotion_key.key_id,
                                 signature=promotion_key.sign(signed.payload()))
    assert "only the audit writer's" in cp.authenticity_problem(forged, keyring)
    with pytest.raises(ValueError, match="audit writer's key"):
        cp.sign(promotion_key, head, NOW)
    stranger = dataclasses.replace(signed, kid="00" * 8)
    assert "unknown key" in cp.authenticity_problem(stranger, keyring)
    good, problems = cp.authentic([signed, moved], keyring)
    assert good == [signed] and [p.kind for p in problems] == [cp.FORGED_CHECKPOINT]


@pytest.mark.parametrize("raw", [b"[]", b"{}", b"not json",
                                 b'{"type":"modelreg.audit.checkpoint","seq":-1,"hash":"h","records":0,'
                                 b'"time":"2026-11-30T00:00:00Z","kid":"k","signature":"s"}'])
def test_malformed_checkpoint_objects_are_refused(raw):
    with pytest.raises(ValueError):
        cp.Checkpoint.from_json(raw)


def test_a_checkpoint_is_due_after_n_records_or_t_seconds_of_fresh_records(signing):
    signing_keys, _ = signing
    _, head = chain(records(10))
    last = cp.sign(signing_keys["audit"], ChainHead(4, "a" * 64, 4), NOW)
    rules = {"every_records": 5, "every_seconds": 60.0}
    assert cp.due(head, last, since=NOW, now=NOW, fresh=True, **rules)  # 6 new records >= 5
    assert not cp.due(head, last, since=NOW, now=NOW, fresh=True, every_records=7, every_seconds=60)
    assert cp.due(head, last, since=NOW, now=NOW + timedelta(seconds=60), fresh=True, every_records=7,
                  every_seconds=60)
    # only checkpoint announcements since the last one: nothing to sign, however long it was
    assert not cp.due(head, last, since=NOW, now=NOW + timedelta(days=1), fresh=False, **rules)
    assert not cp.due(ChainHead(4, "a" * 64, 4), last, since=NOW, now=NOW + timedelta(days=1), fresh=True, **rules)
    assert cp.due(head, None, since=NOW, now=NOW, fresh=True, **rules)


def test_the_writer_signs_only_a_segment_that_links_on_from_its_last_checkpoint(signing):
    signing_keys, _ = signing
    first, head1 = chain(records(4))
    previous = cp.sign(signing_keys["audit"], head1, NOW)
    second, head2 = chain(records(3, start=4), head1)

    check = cp.SegmentCheck(previous)
    for row in second:
        check.feed(row)
    assert check.finish(head2) is None

    rewritten, rehead = chain([dataclasses.replace(r.record, actor="mallory") for r in first] +
                              [r.record for r in second])
    check = cp.SegmentCheck(previous)
    for row in rewritten[4:]:
        check.feed(row)
    assert "does not link on from seq 4" in check.finish(rehead)

    altered = [second[0], dataclasses.replace(second[1], record=dataclasses.replace(second[1].record, reason="x")),
               second[2]]
    check = cp.SegmentCheck(previous)
    for row in altered:
        check.feed(row)
    assert "seq 6: the stored hash does not match" in check.finish(head2)

    check = cp.SegmentCheck(previous)
    for row in second[:2]:
        check.feed(row)
    assert "the rows end at seq 6" in check.finish(head2)


def test_an_intact_log_agrees_with_every_checkpoint(signing):
    signing_keys, _ = signing
    rows, head = chain(records(10))
    checkpoints = [cp.sign(signing_keys["audit"], ChainHead(r.seq, r.hash, r.seq), NOW) for r in rows[2::3]]
    assert audit(rows, head, checkpoints) == []


def test_a_recomputed_chain_is_named_at_the_first_checkpoint_it_disagrees_with(signing):
    signing_keys, _ = signing
    rows, head = chain(records(10))
    checkpoints = [cp.sign(signing_keys["audit"], ChainHead(r.seq, r.hash, r.seq), NOW) for r in rows[2::3]]
    # someone with database access changes seq 5 and re-hashes everything after it, head too
    forged = [r.record for r in rows]
    forged[4] = dataclasses.replace(forged[4], to_stage="production")
    rewritten, rewritten_head = chain(forged)
    problems = audit(rewritten, rewritten_head, checkpoints)
    assert [(p.seq, p.kind) for p in problems] == [(6, cp.REWRITTEN)]
    assert "1 later checkpoint(s) disagree too" in problems[0].detail


def test_a_deleted_row_with_the_chain_recomputed_is_named(signing):
    signing_keys, _ = signing
    rows, head = chain(records(10))
    checkpoint = cp.sign(signing_keys["audit"], head, NOW)
    # delete seq 3, keep every seq and re-link the rest so each hash agrees with the table
    kept = [r for r in rows if r.seq != 3]
    relinked, relinked_head = chain([r.record for r in kept], ChainHead(), [r.seq for r in kept])
    problems = audit(relinked, relinked_head, [checkpoint])
    assert [(p.seq, p.kind) for p in problems] == [(10, cp.REWRITTEN)]
    # a deleted row that the checkpoint names itself
    tail_cut = [r for r in rows if r.seq != 10]
    problems = audit(tail_cut + [], ChainHead(9, rows[8].hash, 9), [checkpoint])
    assert [p.kind for p in problems] == [TRUNCATED, cp.HEAD_BEHIND]
    middle = cp.sign(signing_keys["audit"], ChainHead(5, rows[4].hash, 5), NOW)
    without_five = [r for r in rows if r.seq != 5]
    problems = audit(without_five, head, [middle])
    assert [(p.seq, p.kind) for p in problems] == [(5, cp.ROW_DELETED)]


def test_the_count_catches_a_deletion_even_where_the_hashes_were_forged_to_agree(signing):
    signing_keys, _ = signing
    rows, head = chain(records(6))
    checkpoint = cp.sign(signing_keys["audit"], head, NOW)
    # (only possible with a hash collision, but the count is checked on its own)
    fewer = [r for r in rows if r.seq != 2]
    problems = audit(fewer, head, [checkpoint])
    assert [(p.seq, p.kind) for p in problems] == [(6, cp.ROWS_MISSING)]
    assert "counted 6 records up to here; the log has 5" in problems[0].detail


def test_a_truncated_tail_is_named_at_the_new_last_row(signing):
    signing_keys, _ = signing
    rows, head = chain(records(8))
    checkpoint = cp.sign(signing_keys["audit"], head, NOW)
    shortened = rows[:5]
    problems = audit(shortened, ChainHead(5, rows[4].hash, 5), [checkpoint])
    assert [(p.seq, p.kind) for p in problems] == [(5, TRUNCATED), (None, cp.HEAD_BEHIND)]
    assert "covers seq 8 (8 records); the log ends at seq 5" in problems[0].detail


class _Objects:
    """An object store whose object-lock question fails as a busy server's would."""

    bucket = "modelreg"

    def __init__(self) -> None:
        self.stored: list[str] = []

    async def object_lock_enabled(self) -> bool:
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "busy"},
                           "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObjectLockConfiguration")

    async def put_if_absent(self, location, body, sha256) -> bool:
        self.stored.append(location.key)
        return True


async def test_a_checkpoint_is_not_stored_while_the_lock_question_has_no_answer(signing):
    """Stored first and then failing to ask, the checkpoint would be found by the next tick's
    conditional put: never recorded in the chain, never locked."""
    signing_keys, _keyring = signing
    rows, head = chain(records(3))
    checkpoint = cp.sign(signing_keys["audit"], head, datetime.now(UTC))
    objects = _Objects()
    with pytest.raises(ClientError):
        await CheckpointObjects(objects).put(checkpoint)  # type: ignore[arg-type]
    assert objects.stored == []
