"""shared.broker.OffsetCommits: offsets committed from the poll loop, where nothing is in
flight, at most once per interval, until a while after the last records; never while a batch
is out with the handler; a refused commit tried again."""

from __future__ import annotations

import asyncio

from aiokafka.errors import CommitFailedError

from shared.broker import OffsetCommits


class Consumer:
    """What aiokafka's consumer.commit() would commit (its positions), per call."""

    def __init__(self) -> None:
        self.position = 0
        self.commits: list[int] = []
        self.refuse = False

    async def commit(self) -> None:
        if self.refuse:
            raise CommitFailedError("the group rebalanced")
        self.commits.append(self.position)


async def poll(commits: OffsetCommits, consumer: Consumer, records: int) -> None:
    """One turn of the loop: before polling, then what the poll handed over (applied at once)."""
    await commits.before_poll(consumer)  # type: ignore[arg-type]
    consumer.position += records
    commits.polled(records)


async def test_commits_at_most_once_an_interval_and_only_what_was_applied() -> None:
    consumer, commits = Consumer(), OffsetCommits(interval=0.2)
    await poll(commits, consumer, 0)  # idle since start: nothing to commit
    assert consumer.commits == []
    await poll(commits, consumer, 3)
    await poll(commits, consumer, 2)  # the first batch is applied: committed at once
    await poll(commits, consumer, 4)  # within the interval: waits
    assert consumer.commits == [3]
    await asyncio.sleep(0.25)
    await poll(commits, consumer, 0)
    assert consumer.commits == [3, 9]


async def test_it_keeps_committing_a_while_after_the_last_records_then_stops() -> None:
    """A transaction marker after a batch's last record moves the position on a later poll
    that hands over nothing: that position must be committed too."""
    consumer, commits = Consumer(), OffsetCommits(interval=0.1)
    await poll(commits, consumer, 5)
    consumer.position += 1  # the marker, consumed by the next poll
    await poll(commits, consumer, 0)
    await asyncio.sleep(0.15)
    await poll(commits, consumer, 0)
    assert consumer.commits[-1] == 6
    await asyncio.sleep(1.0)  # long idle: no more commits
    done = len(consumer.commits)
    await poll(commits, consumer, 0)
    await asyncio.sleep(0.15)
    await poll(commits, consumer, 0)
    assert len(consumer.commits) == done


async def test_a_refused_commit_is_tried_again_and_a_stop_never_commits_a_batch_still_out() -> None:
    consumer, commits = Consumer(), OffsetCommits(interval=0.1)
    await poll(commits, consumer, 2)
    consumer.refuse = True
    await poll(commits, consumer, 0)  # a rebalance: refused
    consumer.refuse = False
    await asyncio.sleep(0.15)
    await poll(commits, consumer, 0)
    assert consumer.commits == [2]

    await commits.before_poll(consumer)  # type: ignore[arg-type]
    consumer.position += 7
    commits.polled(7)  # handed over, not applied yet
    await commits.stop()
    assert consumer.commits == [2]  # its records come again after the restart

    await commits.before_poll(consumer)  # type: ignore[arg-type]  # applied now
    await commits.stop()
    assert consumer.commits[-1] == 9
