"""What the outbox relay does with a row, decided without I/O.

- Which publish errors park a row (Kafka will refuse it until someone changes something:
  an ACL, a topic, the row itself) and which are waited out (Kafka unreachable, a leader
  moving, a timeout): `disposition`.
- In what order rows may leave: a pass sends every model's rows in one Kafka transaction
  (`send_chains`); when one fails, the transaction is aborted and what came before it in its
  model goes again (`resend_after_abort`), so a row that fails never lets a later row of its
  model overtake it.
- How long the relay waits after a publish failure it retries (`publish_backoff`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    IllegalOperation,
    InvalidTopicError,
    InvalidTxnState,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownTopicOrPartitionError,
    UnsupportedForMessageFormatError,
)

Reason = Literal["too_large", "unknown_topic", "authorization", "serialization"]

_REASONS: tuple[tuple[tuple[type[BaseException], ...], Reason], ...] = (
    ((MessageSizeTooLargeError, RecordTooLargeError, UnsupportedForMessageFormatError), "too_large"),
    ((InvalidTopicError,), "unknown_topic"),
    ((TopicAuthorizationFailedError, ClusterAuthorizationFailedError,
      TransactionalIdAuthorizationFailed), "authorization"),
)


class RowNotSerializable(ValueError):
    """The row cannot become a Kafka record (a key or header that is not text, a value that
    is not bytes): retrying the same row would fail the same way."""


@dataclass(frozen=True)
class Disposition:
    park: bool
    reason: Reason | None = None  # why it parks; None when it is retried


RETRY = Disposition(park=False)


def disposition(exc: BaseException, *, topic_missing: bool | None = None) -> Disposition:
    """Park or retry a row whose publication raised `exc`.

    An unknown topic is only believed when a fresh look at the cluster's metadata confirmed
    the topic is absent (`topic_missing=True`): aiokafka raises the same error when it could
    not fetch metadata at all, which is a broker being down, not a missing topic.
    """
    if isinstance(exc, RowNotSerializable):
        return Disposition(park=True, reason="serialization")
    if isinstance(exc, UnknownTopicOrPartitionError):
        return Disposition(park=True, reason="unknown_topic") if topic_missing is True else RETRY
    for kinds, reason in _REASONS:
        if isinstance(exc, kinds):
            return Disposition(park=True, reason=reason)
    return RETRY


def publish_backoff(failures: int, *, first: float = 0.2, cap: float = 10.0) -> float:
    """Seconds to wait after the `failures`-th publish failure in a row (1, 2, ...): doubling
    from `first`, at most `cap`; 0 when nothing failed."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2.0 ** min(failures - 1, 32))


R = TypeVar("R")


def order_key(topic: str, key: str | None) -> tuple[str, str] | None:
    """What a relay keeps in order: one model's rows on one topic. Kafka orders records within
    a partition only, and a key always lands on the same partition of a topic; across topics
    no consumer sees any order, so a model's event and its audit record (two topics) have
    none to keep. A row without a key has no order to keep at all."""
    return None if key is None else (topic, key)


def send_chains(rows: Sequence[R], key_of: Callable[[R], Hashable | None]) -> list[list[R]]:
    """Rows (in id order) split into chains: all rows of one key (`order_key`) in one chain, in
    order; a row without a key is a chain of its own. A relay pass sends every chain in one
    Kafka transaction, so a model's later rows on a topic are never seen ahead of an earlier
    one that failed (`resend_after_abort`)."""
    chains: dict[Hashable, list[R]] = {}
    loose: list[list[R]] = []
    for row in rows:
        key = key_of(row)
        if key is None:
            loose.append([row])
        else:
            chains.setdefault(key, []).append(row)
    return [*chains.values(), *loose]


# What aiokafka raises for a row sent after its transaction failed: no transaction open any
# more (IllegalOperation), or a partition the failed transaction never added (InvalidTxnState).
_FAILED_WITH_THE_TRANSACTION = (IllegalOperation, InvalidTxnState)


def first_failures(attempt: Sequence[tuple[R, Exception | None]],
                   key_of: Callable[[R], Hashable | None]) -> list[tuple[R, Exception]]:
    """The failures of a transaction's rows (in the order they were sent) that decide what
    happens to them: per chain (key), its first row that failed for a reason of its own.

    One row's failure fails the transaction, and the sends after it then fail only for that
    (`_FAILED_WITH_THE_TRANSACTION`): those rows did nothing wrong and go again. When no row
    failed for a reason of its own (the whole transaction failed), each chain's first failed
    row is kept back instead, so that every aborted attempt settles at least one row."""
    own: dict[Hashable, tuple[R, Exception]] = {}
    any_failed: dict[Hashable, tuple[R, Exception]] = {}
    for position, (row, error) in enumerate(attempt):
        if error is None:
            continue
        chain: Hashable = key_of(row)
        if chain is None:
            chain = ("loose", position)
        any_failed.setdefault(chain, (row, error))
        if not isinstance(error, _FAILED_WITH_THE_TRANSACTION):
            own.setdefault(chain, (row, error))
    return list((own or any_failed).values())


def resend_after_abort(chains: Sequence[Sequence[R]], failed: Callable[[R], bool]) -> list[list[R]]:
    """What a relay pass sends again, in a fresh transaction, after the one in which the rows
    that `failed` were sent was aborted: each chain up to its first failed row (that row is
    parked or waits for the next pass, and holds back the rest of its model's rows); chains
    with no failure whole. Every retry has fewer rows than the attempt before it."""
    again: list[list[R]] = []
    for chain in chains:
        prefix: list[R] = []
        for row in chain:
            if failed(row):
                break
            prefix.append(row)
        if prefix:
            again.append(prefix)
    return again


def check_serializable(key: object, value: object, headers: object) -> None:
    """Raise `RowNotSerializable` unless the row can be sent as it is."""
    if key is not None and not isinstance(key, str):
        raise RowNotSerializable(f"key is {type(key).__name__}, not text")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise RowNotSerializable(f"value is {type(value).__name__}, not bytes")
    if not isinstance(headers, dict):
        raise RowNotSerializable(f"headers are {type(headers).__name__}, not an object")
    for name, text in headers.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise RowNotSerializable(f"header {name!r} is {type(text).__name__}, not text")
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise RowNotSerializable(f"header {name!r} is not encodable: {exc}") from None
    if key is not None:
        try:
            key.encode()
        except UnicodeEncodeError as exc:
            raise RowNotSerializable(f"key is not encodable: {exc}") from None
