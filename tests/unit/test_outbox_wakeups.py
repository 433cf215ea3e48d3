"""When the outbox relay looks again: a commit's NOTIFY wakes it, unless the rows it names
were already taken by a pass (the local commit that wrote them woke the relay first)."""

from __future__ import annotations

from typing import Any

from shared.outbox import OutboxRelay


def _relay(service: str = "ingest") -> OutboxRelay:
    publisher: Any = object()  # never used: no pass runs here
    return OutboxRelay("postgresql://unused", service, publisher, lambda topic: topic)


def _woken(relay: OutboxRelay, payload: str) -> bool:
    relay._wake.clear()
    relay._on_notify(None, 0, "modelreg_outbox", payload)
    return relay._wake.is_set()


def test_a_commit_of_this_service_wakes_the_relay() -> None:
    assert _woken(_relay(), "ingest:41")


def test_another_services_commit_does_not() -> None:
    assert not _woken(_relay(), "validation:41")
    assert not _woken(_relay(), "ingestion:41")


def test_rows_a_recent_pass_took_do_not_wake_it_again() -> None:
    relay = _relay()
    relay._recent = (frozenset({7, 8}), frozenset({40, 41}))
    assert not _woken(relay, "ingest:41")
    assert not _woken(relay, "ingest:8")
    assert _woken(relay, "ingest:42")


def test_a_notify_without_a_row_id_wakes_it() -> None:
    """As an operator's `modelreg outbox retry`, or an instance of an earlier release, sends it."""
    relay = _relay()
    relay._recent = (frozenset(), frozenset({41}))
    assert _woken(relay, "ingest")
