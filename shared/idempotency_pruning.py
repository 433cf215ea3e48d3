"""Pruning `processed_events`, the ids each consumer keeps to apply every event once.

A row may go only when Kafka can no longer hand its event to the consumer again. Kafka
redelivers a record to a consumer group in two ways:

1. Not yet committed: a batch in flight when a service dies or a rebalance happens. Minutes
   at most, since the group commits after every batch.
2. The group's committed offsets are gone: the group stayed empty longer than the broker's
   `offsets.retention.minutes` (7 days by default), or someone reset it. The services start
   at `earliest`, so the group then reads again every record still on the topic.

Case 2 bounds the window: a record stays on its topic for the topic's `retention.ms`, counted
from the newest record of its log segment, and a segment is only closed (`segment.ms`, 7 days
by default) before it can be deleted. So a record may be redelivered up to retention + segment
roll after it was written, and its id (stamped `processed_at`, which is after the write) must
be kept at least that long. `MODELREG_PROCESSED_EVENTS_KEEP_HOURS` says how long that is for
the deployment's topics (default 360 h = 7 days' retention + 7 days' roll + a day's margin);
a topic the registry configures itself with a longer retention raises it for its consumers,
and a consumer of a topic kept forever (registry.audit) is never pruned. There is no count
bound on purpose: dropping ids still inside the window would let a redelivery apply twice.

A redrive (`modelreg dlq redrive`) does not rely on these rows: it forgets the one row itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Literal

# How long Kafka may keep a closed segment before deleting it, beyond the retention: a
# segment is deleted only once its newest record has expired, and rolled after segment.ms.
DEFAULT_SEGMENT_ROLL = timedelta(days=7)


def topic_retention(configs: Mapping[str, Mapping[str, str]], topic: str) -> timedelta | None | Literal[False]:
    """The retention the registry sets on `topic` (from the broker's TOPIC_CONFIGS): a
    timedelta, None when it keeps records forever, False when it sets none (broker default)."""
    value = configs.get(topic, {}).get("retention.ms")
    if value is None:
        return False
    millis = int(value)
    return None if millis < 0 else timedelta(milliseconds=millis)


def keep_for(consumed: Iterable[str], configs: Mapping[str, Mapping[str, str]], keep: timedelta,
             segment_roll: timedelta = DEFAULT_SEGMENT_ROLL) -> timedelta | None:
    """How long a consumer of `consumed` topics must keep its processed ids: `keep` (the
    setting, which covers the broker's default retention), raised to retention + segment roll
    of any topic configured longer; None (never prune) when a topic keeps records forever."""
    longest = keep
    for topic in consumed:
        retention = topic_retention(configs, topic)
        if retention is None:
            return None
        if retention is not False:
            longest = max(longest, retention + segment_roll)
    return longest


def prune_before(now: datetime, window: timedelta | None) -> datetime | None:
    """Rows processed before this moment may be deleted; None: keep everything."""
    if window is None:
        return None
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone (processed_at is timestamptz)")
    return now - window
