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
    """Positions as aiokafka reports them after a batch (the assigned partitions); what was
    committed."""

    def __init__(self) -> None:
        self.positions: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse = False

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

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


async def test_a_commit_refused_during_a_rebalance_is_tried_again_without_a_new_batch() -> None:
    consumer, commits = Consumer(), OffsetCommits(interval=0.2)
    consumer.positions = {A: 3}
    consumer.refuse = True
    await commits.applied(consumer, batch(A, B))  # type: ignore[arg-type]  # B revoked mid-batch
    assert consumer.commits == []
    consumer.refuse = False
    await asyncio.sleep(0.6)
    assert consumer.commits == [{A: 3}]


async def test_a_partition_revoked_before_the_commit_is_left_to_its_new_owner() -> None:
    consumer, commits = Consumer(), OffsetCommits(interval=60)
    consumer.positions = {A: 1}
    await commits.applied(consumer, batch(A))  # type: ignore[arg-type]
    consumer.positions = {A: 4, B: 6}
    await commits.applied(consumer, batch(A, B))  # type: ignore[arg-type]
    del consumer.positions[B]
    await commits.stop()  # a graceful stop commits what is due at once
    assert consumer.commits == [{A: 1}, {A: 4}]


@pytest.mark.parametrize("interval", [0.0, 60.0])
async def test_nothing_applied_commits_nothing(interval: float) -> None:
    commits = OffsetCommits(interval=interval)
    await commits.flush()
    await commits.stop()
