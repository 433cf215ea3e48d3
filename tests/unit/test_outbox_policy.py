"""Which publish errors park an outbox row, in what order rows leave, how long the relay waits."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from shared.outbox_policy import (
    RowNotSerializable,
    check_serializable,
    disposition,
    order_key,
    publish_backoff,
    resend_after_abort,
    send_chains,
)


@pytest.mark.parametrize(("error", "reason"), [
    (TopicAuthorizationFailedError("model.ingested"), "authorization"),
    (ClusterAuthorizationFailedError(), "authorization"),
    (MessageSizeTooLargeError(), "too_large"),
    (RecordTooLargeError(), "too_large"),
    (InvalidTopicError(), "unknown_topic"),
    (RowNotSerializable("header 'x' is int, not text"), "serialization"),
])
def test_errors_kafka_will_repeat_park_the_row(error: Exception, reason: str) -> None:
    decided = disposition(error)
    assert decided.park and decided.reason == reason


@pytest.mark.parametrize("error", [
    KafkaConnectionError(), KafkaTimeoutError(), RequestTimedOutError(), NotLeaderForPartitionError(),
    ConnectionResetError(), TimeoutError(), OSError("network unreachable"),
])
def test_passing_errors_are_retried(error: Exception) -> None:
    assert not disposition(error).park


def test_an_unknown_topic_parks_only_when_the_cluster_confirms_it_is_missing() -> None:
    # aiokafka raises UnknownTopicOrPartitionError also when it could not fetch metadata at all
    # (every broker down): that must be waited out, not parked.
    assert not disposition(UnknownTopicOrPartitionError()).park
    assert not disposition(UnknownTopicOrPartitionError(), topic_missing=None).park
    assert not disposition(UnknownTopicOrPartitionError(), topic_missing=False).park
    confirmed = disposition(UnknownTopicOrPartitionError(), topic_missing=True)
    assert confirmed.park and confirmed.reason == "unknown_topic"


def test_backoff_doubles_up_to_a_cap_and_is_zero_without_failures() -> None:
    assert publish_backoff(0) == 0
    waits = [publish_backoff(n, first=0.2, cap=10) for n in range(1, 12)]
    assert waits[:4] == [0.2, 0.4, 0.8, 1.6]
    assert all(b >= a for a, b in zip(waits, waits[1:], strict=False))
    assert max(waits) == 10
    assert publish_backoff(10_000, cap=7) == 7


def test_chains_keep_each_models_rows_in_order_and_loose_rows_apart() -> None:
    rows = [(1, "a"), (2, "b"), (3, "a"), (4, None), (5, "b"), (6, "a"), (7, None)]
    chains = send_chains(rows, lambda r: r[1])
    assert [[r[0] for r in c] for c in chains] == [[1, 3, 6], [2, 5], [4], [7]]
    assert sorted(r for c in chains for r in c) == sorted(rows)  # nothing lost or doubled


def test_a_model_has_an_order_to_keep_on_each_topic_and_none_across_topics() -> None:
    rows = [(1, "model.promoted", "a"), (2, "registry.audit", "a"), (3, "model.promoted", "a"),
            (4, "registry.audit", None), (5, "model.promoted", "b")]
    chains = send_chains(rows, lambda r: order_key(r[1], r[2]))
    assert [[r[0] for r in c] for c in chains] == [[1, 3], [2], [5], [4]]
    assert order_key("registry.audit", None) is None


def test_after_an_aborted_attempt_each_chain_goes_again_up_to_its_first_failure() -> None:
    chains = [[1, 3, 6], [2, 5], [4], [7, 8]]
    failed = {3, 2, 8, 6}.__contains__
    # 1 goes again; 3 failed, so 6 (failed too) waits behind it; 2 failed first; 4 whole; 7 before 8.
    assert resend_after_abort(chains, failed) == [[1], [4], [7]]
    assert resend_after_abort(chains, lambda row: False) == chains  # nothing failed: all of it
    assert resend_after_abort(chains, lambda row: True) == []


@pytest.mark.parametrize(("key", "value", "headers"), [
    (b"bytes-key", b"{}", {}),
    ("m", "not bytes", {}),
    ("m", b"{}", {"content-type": 1}),
    ("m", b"{}", ["not", "a", "dict"]),
    ("\ud800", b"{}", {}),  # a lone surrogate cannot be encoded as UTF-8
    ("m", b"{}", {"traceparent": "\udcff"}),
])
def test_rows_that_cannot_become_records_are_not_serializable(key: object, value: object, headers: object) -> None:
    with pytest.raises(RowNotSerializable):
        check_serializable(key, value, headers)


def test_a_well_formed_row_is_serializable() -> None:
    check_serializable("model-a", b'{"id": 1}', {"content-type": "application/cloudevents+json"})
    check_serializable(None, b"{}", {})
