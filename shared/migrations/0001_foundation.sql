-- The foundation: delivery machinery every service uses, and the tables each service owns.
-- One database, but a table belongs to one service; the others learn its facts from events.

-- Delivery (shared) ---------------------------------------------------------------------

-- A consumer's record of every event it has applied, written in the same transaction as the
-- state change: a redelivered event finds its row and changes nothing.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- What a handler emits, committed with its state change and published by the relay.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    service    text        NOT NULL,
    topic      text        NOT NULL,
    key        text,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_by_service ON outbox (service, id);

-- Rows Kafka refused for good (e.g. too large): parked for ops, so the relay moves on.
CREATE TABLE outbox_parked (
    id        bigint      PRIMARY KEY,
    service   text        NOT NULL,
    topic     text        NOT NULL,
    key       text,
    value     bytea       NOT NULL,
    headers   jsonb       NOT NULL,
    error     text        NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);

-- ingest: the registry of record --------------------------------------------------------

CREATE TABLE models (
    name         text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    -- The highest version number handed out; bumped under the row lock, so concurrent
    -- registrations of one name get distinct versions.
    last_version integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    name                text        NOT NULL REFERENCES models (name),
    version             integer     NOT NULL CHECK (version >= 1),
    status              text        NOT NULL CHECK (status IN ('pending', 'ingested', 'rejected')),
    source_uri          text        NOT NULL,
    artifact_uri        text,
    sha256              text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes          bigint      NOT NULL CHECK (size_bytes >= 0),
    format              text,
    run_id              text,
    metrics             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    params              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    tags                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    dataset             jsonb,
    signature           jsonb,
    description         text,
    source              text        NOT NULL,
    registered_by       text,
    correlation_id      uuid        NOT NULL,
    registered_event_id uuid        NOT NULL,
    reasons             jsonb,
    registered_at       timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
CREATE INDEX model_versions_by_tags ON model_versions USING gin (tags jsonb_path_ops);

-- promotion: evaluations and the stage history -------------------------------------------

CREATE TABLE evaluations (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    name         text        NOT NULL,
    version      integer     NOT NULL,
    suite        text        NOT NULL,
    environment  text        NOT NULL CHECK (environment IN ('offline', 'staging', 'production')),
    metrics      jsonb       NOT NULL,
    passed       boolean,
    dataset      jsonb,
    evaluator    text,
    evaluated_at timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX evaluations_latest ON evaluations (name, version, suite, environment, id DESC);

CREATE TABLE stage_history (
    id             bigserial   PRIMARY KEY,
    name           text        NOT NULL,
    version        integer     NOT NULL,
    from_stage     text        NOT NULL CHECK (from_stage IN ('none', 'staging', 'production', 'archived')),
    to_stage       text        NOT NULL CHECK (to_stage IN ('none', 'staging', 'production', 'archived')),
    reason         text        NOT NULL,
    actor          text        NOT NULL,
    event_id       uuid        NOT NULL,
    correlation_id uuid,
    evidence       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    changed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stage_history_by_version ON stage_history (name, version, id);
CREATE INDEX stage_history_by_time ON stage_history (name, changed_at);

-- audit: the append-only, hash-chained log of every state change ---------------------------

CREATE TABLE audit_log (
    seq            bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    action         text        NOT NULL,
    name           text        NOT NULL,
    version        integer,
    from_stage     text,
    to_stage       text,
    actor          text        NOT NULL,
    reason         text,
    evidence       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id uuid,
    causation_id   uuid,
    source         text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    prev_hash      text        NOT NULL,
    hash           text        NOT NULL UNIQUE
);
CREATE INDEX audit_log_by_model ON audit_log (name, version, seq);
CREATE INDEX audit_log_by_time ON audit_log (occurred_at);
