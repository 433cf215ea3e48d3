-- Dead letters people can act on: every `registry.dlq` record, projected by the audit writer
-- (services/audit/dlq.py), queryable by service, kind and time, and redriven on request.
--
-- A redrive is asked for by ops (`modelreg dlq redrive`, or an admin through the API), who set
-- redrive_requested_*; the audit writer performs it (republishes the original record through
-- its outbox, records a `redriven` audit record) and sets redriven_*, in one transaction. Rows
-- are set once: asking twice changes nothing.

CREATE TABLE dead_letters (
    id                   uuid        PRIMARY KEY,      -- the registry.dlq event's id
    service              text        NOT NULL,         -- the consumer that refused the record
    kind                 text        NOT NULL,         -- error.kind (not_json, unknown_version, ...)
    message              text        NOT NULL,
    original_topic       text        NOT NULL,         -- unprefixed topic name
    "partition"          integer,
    "offset"             bigint,
    key                  text,
    payload              bytea       NOT NULL,         -- the original record's bytes
    original_event_id    uuid,                         -- where the record parsed: its event id
    correlation_id       uuid,
    dead_lettered_at     timestamptz NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    redrive_requested_at timestamptz,
    redrive_requested_by text,
    redriven_at          timestamptz,
    redriven_by          text,
    CHECK ((redrive_requested_at IS NULL) = (redrive_requested_by IS NULL)),
    CHECK ((redriven_at IS NULL) = (redriven_by IS NULL)),
    CHECK (redriven_at IS NULL OR redrive_requested_at IS NOT NULL)
);
CREATE INDEX dead_letters_by_time ON dead_letters (dead_lettered_at DESC, id);
CREATE INDEX dead_letters_by_service_kind ON dead_letters (service, kind, dead_lettered_at DESC);
CREATE INDEX dead_letters_redrive_pending ON dead_letters (redrive_requested_at)
    WHERE redrive_requested_at IS NOT NULL AND redriven_at IS NULL;

-- `dlq show` finds a letter's audit records (dead_lettered, redriven) by the id they name.
CREATE INDEX audit_log_by_dlq_event ON audit_log ((evidence ->> 'dlq_event_id'))
    WHERE evidence ? 'dlq_event_id';

GRANT SELECT, INSERT, UPDATE ON dead_letters TO modelreg_audit;
-- A redrive makes the consumer that refused a parsed event handle it again: that consumer
-- recorded the event id as processed, and would skip the same bytes. The audit writer forgets
-- exactly that one row, in the transaction that republishes the record.
GRANT DELETE ON processed_events TO modelreg_audit;

-- The API lists and shows letters and records an admin's redrive request; nothing else.
GRANT SELECT ON dead_letters TO modelreg_api;
GRANT UPDATE (redrive_requested_at, redrive_requested_by) ON dead_letters TO modelreg_api;
