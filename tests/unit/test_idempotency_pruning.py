"""How long each consumer keeps its processed-event ids, decided without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.broker import TOPIC_CONFIGS
from shared.idempotency_pruning import DEFAULT_SEGMENT_ROLL, keep_for, prune_before, topic_retention

KEEP = timedelta(hours=360)


def test_topics_on_the_brokers_default_retention_keep_the_setting() -> None:
    assert keep_for(("model.registered", "model.ingested"), TOPIC_CONFIGS, KEEP) == KEEP


def test_a_consumer_of_a_topic_kept_forever_is_never_pruned() -> None:
    # registry.audit is the source of truth and never trimmed: a group whose offsets are lost
    # reads it all again, so every id it ever applied must stay.
    assert topic_retention(TOPIC_CONFIGS, "registry.audit") is None
    assert keep_for(("model.promoted", "registry.audit"), TOPIC_CONFIGS, KEEP) is None
    assert prune_before(datetime(2026, 11, 30, tzinfo=UTC), None) is None


def test_a_topic_configured_longer_than_the_setting_raises_it_by_retention_plus_segment_roll() -> None:
    dlq = topic_retention(TOPIC_CONFIGS, "registry.dlq")
    assert dlq == timedelta(days=90)
    assert keep_for(("registry.dlq",), TOPIC_CONFIGS, KEEP) == dlq + DEFAULT_SEGMENT_ROLL
    # ... and a setting longer than every configured topic wins.
    assert keep_for(("registry.dlq",), TOPIC_CONFIGS, timedelta(days=400)) == timedelta(days=400)


def test_the_cutoff_is_the_window_before_now() -> None:
    now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    assert prune_before(now, KEEP) == datetime(2026, 11, 15, 8, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="time zone"):
        prune_before(now.replace(tzinfo=None), KEEP)


def test_the_default_covers_a_week_of_retention_plus_a_week_of_segment_roll() -> None:
    from shared.settings import Settings

    default = timedelta(hours=Settings.model_fields["processed_events_keep_hours"].default)
    assert default > timedelta(hours=168) + DEFAULT_SEGMENT_ROLL
