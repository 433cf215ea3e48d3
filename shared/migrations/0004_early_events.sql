-- Events that arrive before what they refer to. A consumer reads several topics and Kafka
-- orders each partition, not topics against each other: promotion may see a version's
-- `model.validated` or `metrics.evaluated` before its `model.ingested`. Such an event waits
-- here and is applied when the version appears; one that waits past the grace period was
-- about a version that does not exist, and goes to the DLQ.
CREATE TABLE promotion_deferred (
    event_id   uuid        PRIMARY KEY,
    topic      text        NOT NULL,
    name       text        NOT NULL,
    version    integer     NOT NULL,
    partition  integer,
    "offset"   bigint,
    payload    bytea       NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX promotion_deferred_by_version ON promotion_deferred (name, version, first_seen);
CREATE INDEX promotion_deferred_by_age ON promotion_deferred (first_seen);

-- archival applies stage changes by event time, whatever order its topics deliver them in.
ALTER TABLE archival_versions ADD COLUMN stage_event_time timestamptz;
