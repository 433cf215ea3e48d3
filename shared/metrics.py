"""Prometheus metrics every service exports on `/metrics` (one registry per process; the
`service` label tells services apart when tests run several in one process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("modelreg_events_consumed_total", "Kafka records consumed, by topic (event type)",
                          ["service", "topic"])
EVENTS_EMITTED = Counter("modelreg_events_emitted_total", "Events published to Kafka by the outbox relay",
                         ["service", "topic"])
DEAD_LETTERS = Counter("modelreg_dlq_total", "Records sent to registry.dlq, by error kind", ["service", "kind"])
HANDLER_SECONDS = Histogram("modelreg_handler_seconds", "Time to handle one event inside its batch transaction",
                            ["service", "topic"],
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
BATCH_SECONDS = Histogram("modelreg_batch_seconds", "Time to apply one consumed batch, commit included",
                          ["service"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30))
CONSUMER_LAG = Gauge("modelreg_consumer_lag", "Records not yet consumed, per partition",
                     ["service", "topic", "partition"])
LagLabels = tuple[str, str, str]  # service, topic, partition


def report_lags(service: str, lags: dict[tuple[str, int], int | None], reported: set[LagLabels]) -> set[LagLabels]:
    """Set `CONSUMER_LAG` for the partitions an instance holds now ((topic, partition) -> lag,
    None: not known yet) and drop the series of those it reported before and holds no more (a
    rebalance gave them to another instance, which reports them). Returns what it reports now."""
    now: set[LagLabels] = set()
    for (topic, partition), lag in lags.items():
        labels = (service, topic, str(partition))
        now.add(labels)
        if lag is not None:
            CONSUMER_LAG.labels(*labels).set(lag)
    for gone in reported - now:
        CONSUMER_LAG.remove(*gone)
    return now


OUTBOX_BACKLOG = Gauge("modelreg_outbox_backlog", "Outbox rows waiting to be published", ["service"])
# Alert on a parked row: its model's later events wait until ops retry or discard it.
OUTBOX_PARKED = Gauge("modelreg_outbox_parked_rows", "Outbox rows Kafka refused for good, waiting for ops",
                      ["service"])
OUTBOX_PARKED_TOTAL = Counter("modelreg_outbox_parks_total", "Outbox rows parked, by reason",
                              ["service", "reason"])
OUTBOX_PUBLISH_RETRIES = Counter("modelreg_outbox_publish_retries_total",
                                 "Relay passes that left rows to retry after a passing publish error", ["service"])
PROCESSED_EVENTS_PRUNED = Counter("modelreg_processed_events_pruned_total",
                                  "Idempotency rows deleted because Kafka can no longer redeliver their events",
                                  ["consumer"])
PROMOTION_DECISIONS = Counter("modelreg_promotion_decisions_total", "Promotion decisions, by outcome",
                              ["outcome"])
IO_ROUNDS = Counter("modelreg_batch_io_rounds_total",
                    "Batch transactions rolled back to run I/O a handler asked for outside them, then redone",
                    ["service"])
RETRIES = Counter("modelreg_batch_retries_total", "Batches retried after a fault, by kind", ["service", "kind"])
# The audit writer's signed checkpoints: how far they cover, and heads it refused to sign
# because the log no longer links on from its last checkpoint (alert on any).
AUDIT_CHECKPOINT_SEQ = Gauge("modelreg_audit_checkpoint_seq", "Audit chain seq the newest signed checkpoint covers")
AUDIT_CHECKPOINT_REFUSALS = Counter("modelreg_audit_checkpoint_refusals_total",
                                    "Due audit checkpoints not signed: the log was changed outside the audit writer")
