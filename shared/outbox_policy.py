"""What the outbox relay does with a row, decided without I/O.

- Which publish errors park a row (Kafka will refuse it until someone changes something:
  an ACL, a topic, the row itself) and which are waited out (Kafka unreachable, a leader
  moving, a timeout): `disposition`.
- In what order rows may leave: one model's rows one after the other, every model at once
  (`send_chains`), so a row that fails never lets a later row of its model overtake it.
- How long the relay waits after a publish failure it retries (`publish_backoff`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidTopicError,
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


# An idempotent producer whose batches expired while the cluster was away can stay out of
# step with the brokers' sequence numbers for good (aiokafka never bumps its epoch): after
# this many failed passes in a row the relay gets a fresh producer (a new producer id).
REPLACE_PRODUCER_EVERY = 3


def replace_producer(failed_passes: int, every: int = REPLACE_PRODUCER_EVERY) -> bool:
    """Whether the relay replaces its producer after its `failed_passes`-th failed pass in a row."""
    return failed_passes > 0 and failed_passes % every == 0


R = TypeVar("R")


def send_chains(rows: Sequence[R], key_of: Callable[[R], Hashable | None]) -> list[list[R]]:
    """Rows (in id order) split into chains that may be sent concurrently: all rows of one key
    in one chain, in order; a row without a key is a chain of its own. A chain is sent one
    row at a time and stops at the first failure, so a model's later rows never go out ahead
    of an earlier one that has not."""
    chains: dict[Hashable, list[R]] = {}
    loose: list[list[R]] = []
    for row in rows:
        key = key_of(row)
        if key is None:
            loose.append([row])
        else:
            chains.setdefault(key, []).append(row)
    return [*chains.values(), *loose]


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
