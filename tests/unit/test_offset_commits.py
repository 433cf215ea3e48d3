"""shared.broker.OffsetCommits: an applied batch's positions, committed at most once per
interval; never a position the batch did not reach; a failed commit dropped, not raised."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from shared.broker import OffsetCommits

A, B = TopicPartition("t.model.ingested", 0), TopicPartition("t.model.validated", 1)


class Consumer:
    """Positions as aiokafka reports them after a batch; what was committed."""

    def __init__(self) -> None:
        self.positions: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse = False

    async def position(self, partition: TopicPartition) -> int:
        if partition not in self.positions:
            raise IllegalStateError(f"{partition} is not assigned")
        return self.positions[partition]

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse:
            raise CommitFailedError("the group rebalanced")
        self.commits.append(dict(offsets))


def batch(*partitions: TopicPartition) -> list[SimpleNamespace]:
    return [SimpleNamespace(topic=p.topic, partition=p.partition) for p in partitions]


async def test_the_first_batch_commits_at_once_and_later_ones_together_after_the_interval() -> None:
    consumer, commits = Consumer(), OffsetCommits(interval=0.2)
    consumer.positions = {A: 5, B: 9}
    await commits.applied(consumer, batch(A))  # type: ignore[arg-type]
    assert consumer.commits == [{A: 5}]

    consumer.positions = {A: 7, B: 11}  # past a transaction marker: the position, not offset + 1
    await commits.applied(consumer, batch(A, B))  # type: ignore[arg-type]
    consumer.positions[A] = 8
    await commits.applied(consumer, batch(A))  # type: ignore[arg-type]
    assert consumer.commits == [{A: 5}]  # within the interval: waiting
    await asyncio.sleep(0.3)
    assert consumer.commits == [{A: 5}, {A: 8, B: 11}]


async def test_a_revoked_partition_is_left_to_its_new_owner_and_a_refused_commit_is_dropped() -> None:
    consumer, commits = Consumer(), OffsetCommits(interval=60)
    consumer.positions = {A: 3}
    consumer.refuse = True
    await commits.applied(consumer, batch(A, B))  # type: ignore[arg-type]  # B revoked mid-batch
    assert consumer.commits == []  # refused: the records come again and are recognised

    consumer.refuse = False
    consumer.positions = {A: 4}
    await commits.applied(consumer, batch(A))  # type: ignore[arg-type]
    await commits.stop()  # a graceful stop commits what is due at once
    assert consumer.commits == [{A: 4}]


@pytest.mark.parametrize("interval", [0.0, 60.0])
async def test_nothing_applied_commits_nothing(interval: float) -> None:
    commits = OffsetCommits(interval=interval)
    await commits.flush()
    await commits.stop()
