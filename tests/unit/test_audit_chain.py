"""The audit hash chain, pure: building, verifying, tampering, and the canonical form."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.chain import (
    ALTERED,
    BEYOND_HEAD,
    FIELDS,
    GENESIS,
    PREDECESSOR_MISSING,
    TRUNCATED,
    AuditRecord,
    ChainHead,
    ChainRow,
    Verifier,
    canonical,
    chain,
    link,
    verify,
)
from shared.events import RegistryAudit, RegistryAuditData, new_event

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def record(i: int = 0, **changes: object) -> AuditRecord:
    base = AuditRecord(
        event_id=uuid.UUID(int=1000 + i), action="promoted", name="fraud", version=3,
        from_stage="staging", to_stage="production", actor="modelreg/promotion",
        reason=f"policy {i}", evidence={"auc": 0.91, "n": 2, "checks": ["a", "b"]},
        correlation_id=uuid.UUID(int=1), causation_id=uuid.UUID(int=2),
        source="modelreg/promotion", occurred_at=T0 + timedelta(seconds=i))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def built(n: int = 5) -> tuple[list[ChainRow], ChainHead]:
    return chain([record(i) for i in range(n)])


def with_record(row: ChainRow, **changes: object) -> ChainRow:
    changed = dataclasses.replace(row.record, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(row, record=changed)


# ---------------------------------------------------------------------------- building


def test_a_chain_links_each_row_to_the_one_before() -> None:
    rows, head = built()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS == "0" * 64
    for before, after in zip(rows, rows[1:], strict=False):
        assert after.prev_hash == before.hash
    for row in rows:
        assert row.hash == hashlib.sha256(row.prev_hash.encode() + canonical(row.record)).hexdigest()
    assert head == ChainHead(5, rows[-1].hash, 5)
    assert verify(rows, head) == []


def test_a_chain_continues_from_its_head_with_gaps_in_seq() -> None:
    first, head = built(2)
    more, head2 = chain([record(7), record(8)], head, seqs=[10, 14])
    assert more[0].prev_hash == head.last_hash
    assert head2 == ChainHead(14, more[-1].hash, 4)
    assert verify(first + more, head2) == []
    with pytest.raises(ValueError):
        chain([record(9)], head2, seqs=[14])


def test_an_empty_log_with_a_fresh_head_is_intact() -> None:
    assert verify([], ChainHead()) == []
    assert chain([], ChainHead()) == ([], ChainHead())


def test_the_verifier_can_be_fed_one_row_at_a_time() -> None:
    rows, head = built()
    verifier = Verifier()
    for row in rows:
        verifier.feed(row)
    assert verifier.finish(head) == [] and verifier.count == 5


def test_a_record_is_built_from_a_registry_audit_event() -> None:
    event = new_event(RegistryAudit, RegistryAuditData(
        action="ingested", name="fraud", version=1, to_stage="none", actor="pipelines/train",
        reason="registered", evidence={"sha256": "ab" * 32}), source="modelreg/ingest",
        correlationid=uuid.UUID(int=5))
    rec = AuditRecord.from_event(event)
    assert (rec.event_id, rec.action, rec.name, rec.version, rec.to_stage, rec.actor) == (
        event.id, "ingested", "fraud", 1, "none", "pipelines/train")
    assert rec.correlation_id == uuid.UUID(int=5) and rec.causation_id == event.id
    assert rec.source == "modelreg/ingest" and rec.occurred_at == event.time
    assert rec.evidence == {"sha256": "ab" * 32} and rec.from_stage is None


# ---------------------------------------------------------------------------- tampering


def test_an_altered_row_is_named() -> None:
    rows, head = built()
    rows[2] = with_record(rows[2], reason="tampered")
    problems = verify(rows, head)
    assert [(p.seq, p.event_id, p.kind) for p in problems] == [(3, rows[2].event_id, ALTERED)]
    assert str(problems[0]).startswith(f"seq 3 (event {rows[2].event_id}): altered")


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "event_id"])
def test_altering_any_field_is_detected(field: str) -> None:
    rows, head = built(3)
    changed = {
        "action": "demoted", "name": "fraud2", "version": 4, "from_stage": "none",
        "to_stage": "archived", "actor": "someone", "reason": None,
        "evidence": {"auc": 0.92, "n": 2, "checks": ["a", "b"]},
        "correlation_id": uuid.UUID(int=9), "causation_id": None, "source": "elsewhere",
        "occurred_at": T0 + timedelta(microseconds=1),
    }[field]
    rows[1] = with_record(rows[1], **{field: changed})
    assert [(p.seq, p.kind) for p in verify(rows, head)] == [(2, ALTERED)]


def test_an_altered_event_id_is_detected_and_the_row_named_by_its_new_id() -> None:
    rows, head = built(3)
    forged = uuid.UUID(int=77)
    rows[1] = with_record(rows[1], event_id=forged)
    assert [(p.seq, p.event_id, p.kind) for p in verify(rows, head)] == [(2, forged, ALTERED)]


def test_a_deleted_middle_row_is_detected_at_its_successor() -> None:
    rows, head = built()
    del rows[2]  # seq 3
    problems = verify(rows, head)
    assert [(p.seq, p.event_id, p.kind) for p in problems] == [(4, rows[2].event_id, PREDECESSOR_MISSING)]
    assert "seq 2" in problems[0].detail
    assert "predecessor missing (row deleted?)" in str(problems[0])


def test_a_deleted_first_row_is_detected() -> None:
    rows, head = built()
    problems = verify(rows[1:], head)
    assert [(p.seq, p.kind) for p in problems] == [(2, PREDECESSOR_MISSING)]


def test_rows_deleted_at_the_end_are_detected_by_the_head() -> None:
    rows, head = built()
    problems = verify(rows[:3], head)
    assert [(p.seq, p.event_id, p.kind) for p in problems] == [(3, rows[2].event_id, TRUNCATED)]
    assert "seq 5" in problems[0].detail
    emptied = verify([], head)
    assert [(p.seq, p.kind) for p in emptied] == [(None, TRUNCATED)]


def test_a_rewritten_hash_breaks_the_next_link() -> None:
    rows, head = built()
    forged = with_record(rows[1], reason="tampered")
    rows[1] = dataclasses.replace(forged, hash=link(forged.prev_hash, forged.record))
    assert [(p.seq, p.kind) for p in verify(rows, head)] == [(3, PREDECESSOR_MISSING)]


def test_a_rewritten_last_row_is_caught_by_the_head() -> None:
    rows, head = built()
    forged = with_record(rows[-1], reason="tampered")
    rows[-1] = dataclasses.replace(forged, hash=link(forged.prev_hash, forged.record))
    assert [(p.seq, p.kind) for p in verify(rows, head)] == [(5, ALTERED)]


def test_rows_added_beyond_the_head_are_reported() -> None:
    rows, head = built()
    extra, _ = chain([record(9)], head)
    assert [(p.seq, p.kind) for p in verify(rows + extra, head)] == [(6, BEYOND_HEAD)]


def test_swapped_rows_are_detected() -> None:
    rows, head = built()
    a, b = rows[1], rows[2]
    rows[1] = dataclasses.replace(b, seq=2)
    rows[2] = dataclasses.replace(a, seq=3)
    assert {p.seq for p in verify(rows, head)} >= {2, 3}


# ---------------------------------------------------------------------------- canonical form


def test_the_canonical_form_is_sorted_compact_json_of_exactly_the_content() -> None:
    rec = record(0, evidence={"b": [1, 2.5, None, True], "a": {"y": "é", "x": "q\"uote"}})
    text = canonical(rec).decode("utf-8")
    assert " " not in text.replace("policy 0", "")
    parsed = json.loads(text)
    assert list(parsed) == sorted(FIELDS)
    assert parsed["occurred_at"] == "2025-03-01T12:00:00.123456Z"
    assert parsed["event_id"] == str(uuid.UUID(int=1000))
    assert parsed["evidence"] == {"a": {"x": "q\"uote", "y": "é"}, "b": [1, 2.5, None, True]}
    assert text.index('"a"') < text.index('"b"')
    assert canonical(rec) == (
        '{"action":"promoted","actor":"modelreg/promotion",'
        '"causation_id":"00000000-0000-0000-0000-000000000002",'
        '"correlation_id":"00000000-0000-0000-0000-000000000001",'
        '"event_id":"00000000-0000-0000-0000-0000000003e8",'
        '"evidence":{"a":{"x":"q\\"uote","y":"é"},"b":[1,2.5,null,true]},'
        '"from_stage":"staging","name":"fraud","occurred_at":"2025-03-01T12:00:00.123456Z",'
        '"reason":"policy 0","source":"modelreg/promotion","to_stage":"production","version":3}'
    ).encode()


def test_the_canonical_form_is_stable_across_representations() -> None:
    rec = record(0)
    as_mapping = {f: getattr(rec, f) for f in FIELDS}
    as_mapping.update(event_id=str(rec.event_id), correlation_id=str(rec.correlation_id),
                      occurred_at=rec.occurred_at.astimezone(timezone(timedelta(hours=-5))),
                      evidence=dict(reversed(list(rec.evidence.items()))))
    assert canonical(as_mapping) == canonical(rec)
    assert link(GENESIS, as_mapping) == link(GENESIS, rec)
    # What PostgreSQL's jsonb gives back for numbers: value kept, spelling not.
    sent = record(0, evidence={"f": 2.0, "big": 1e16, "tiny": 1.5e-7, "neg0": -0.0, "huge": 1e300})
    back = record(0, evidence={"f": 2.0, "big": 10**16, "tiny": 1.5e-07, "neg0": 0.0, "huge": 10**300})
    assert canonical(sent) == canonical(back)


def test_the_canonical_form_is_sensitive_to_every_field() -> None:
    base = canonical(record(0))
    variants = {
        "event_id": uuid.UUID(int=1), "action": "demoted", "name": "other", "version": 4,
        "from_stage": None, "to_stage": "archived", "actor": "x", "reason": "",
        "evidence": {}, "correlation_id": None, "causation_id": uuid.UUID(int=3), "source": "y",
        "occurred_at": T0 + timedelta(microseconds=1),
    }
    assert set(variants) == set(FIELDS)
    seen = {base}
    for field, value in variants.items():
        changed = canonical(record(0, **{field: value}))
        assert changed not in seen, field
        seen.add(changed)


def test_the_canonical_form_keeps_big_numbers_exact_and_types_apart() -> None:
    assert canonical(record(0, evidence={"n": 10**40})) != canonical(record(0, evidence={"n": 10**40 + 1}))
    assert canonical(record(0, evidence={"n": 1})) != canonical(record(0, evidence={"n": True}))
    assert canonical(record(0, evidence={"n": "1"})) != canonical(record(0, evidence={"n": 1}))
    assert canonical(record(0, evidence={"n": [1, 2]})) != canonical(record(0, evidence={"n": [2, 1]}))
    assert canonical(record(0, reason=None)) != canonical(record(0, reason="null"))


def test_the_canonical_form_refuses_what_it_cannot_pin_down() -> None:
    with pytest.raises(ValueError):
        canonical(record(0, occurred_at=datetime(2025, 1, 1)))
    with pytest.raises(ValueError):
        canonical(record(0, evidence={"x": float("nan")}))
    with pytest.raises(TypeError):
        canonical(record(0, evidence={"x": object()}))


def _reference_encode(value: object) -> str:
    """The canonical form as first written (json.dumps per string, keys sorted by hand): every
    hash already stored was made by it, so the faster encoder must give the same bytes."""
    from collections.abc import Mapping as AnyMapping

    from services.audit.chain import _number

    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, AnyMapping):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_reference_encode(value[k])}"
                              for k in sorted(value)) + "}"
    assert isinstance(value, list)
    return "[" + ",".join(_reference_encode(item) for item in value) + "]"


_json_values = st.recursive(
    st.none() | st.booleans() | st.text() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(evidence=st.dictionaries(st.text(max_size=8), _json_values, max_size=5), reason=st.text())
def test_the_canonical_form_is_byte_for_byte_what_it_always_was(evidence: dict[str, object], reason: str) -> None:
    try:
        expected_evidence = _reference_encode(evidence).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: refused before and now
        with pytest.raises(ValueError):
            canonical(record(0, evidence=evidence, reason=reason))
        return
    rec = record(0, evidence=evidence, reason="r")
    assert f',"evidence":{expected_evidence.decode()},'.encode() in canonical(rec)
    for hostile in ("\u2028 \x00\x1f\t\n\"\\ é 😀", reason):
        try:
            expected = json.dumps(hostile, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            continue
        assert f',"reason":{expected.decode()},'.encode() in canonical(record(0, reason=hostile))


def _reference_number(value: int | float) -> str:
    """How numbers were first written (Decimal, normalised): the fast paths must agree."""
    from decimal import Context, Decimal

    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if number.is_zero():
        return "0"
    return str(number.normalize(Context(prec=max(28, len(number.as_tuple().digits)))))


@settings(max_examples=2000, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(min_value=-(10**30), max_value=10**30)
       | st.sampled_from([0.0, -0.0, 1e-4, 9.999e-5, 1e15, 1e16, 100.0, -120.5, 0.1, 5e-324, 10, 2**53]))
def test_numbers_are_written_as_they_always_were(value: float) -> None:
    from services.audit.chain import _number

    assert _number(value) == _reference_number(value)


@settings(max_examples=500, deadline=None)
@given(moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                           timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                      timezone(timedelta(hours=-8)), timezone(timedelta(0))])))
def test_timestamps_are_written_as_they_always_were(moment: datetime) -> None:
    from services.audit.chain import timestamp

    assert timestamp(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
