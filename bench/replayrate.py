"""Replay: how fast `services.audit.replay.replay` rebuilds the registry view from the
`registry.audit` topic (the whole topic unless `--replay-max-events`). The rebuild goes into a
scratch schema that is dropped afterwards; the comparison with the live tables is not timed and
not run here (`modelreg replay` does that)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.context import Context
from services.audit.replay import replay
from shared.kafka_security import reader_options


async def start_offset(ctx: Context, limit: int | None) -> int:
    """The one offset to start every partition at so that about `limit` events are replayed."""
    if limit is None:
        return 0
    topic = ctx.settings.topic("registry.audit")
    consumer = AIOKafkaConsumer(**reader_options(ctx.settings), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
    finally:
        await consumer.stop()

    def remaining(offset: int) -> int:
        return sum(max(0, ends[p] - max(starts[p], offset)) for p in partitions)

    low, high = 0, max(ends.values(), default=0)
    while low < high:  # the smallest offset that leaves at most `limit`
        middle = (low + high) // 2
        if remaining(middle) <= limit:
            high = middle
        else:
            low = middle + 1
    return low


async def run(ctx: Context) -> dict[str, Any]:
    offset = await start_offset(ctx, ctx.config.replay_max_events)
    ctx.log("replay: rebuilding the registry view from registry.audit"
            + (f" (from offset {offset} of each partition)" if offset else ""))
    report = await replay(ctx.settings, from_offset=offset)
    return {"events": report.events, "duplicates_skipped": report.duplicates, "invalid_skipped": report.skipped,
            "seconds": round(report.seconds, 3), "events_per_second": round(report.rate, 1),
            "from_offset": offset, "compared_with_live": False}
