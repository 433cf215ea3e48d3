-- The Level 2 pipeline: the tables of validation, promotion and archival, and ingest's
-- version claims.

-- ingest: a version number handed out to a registration before its artifact is copied (the
-- copy's key holds the number). Keyed by event id, so a redelivered event gets its number back.
CREATE TABLE ingest_claims (
    event_id   uuid        PRIMARY KEY,
    name       text        NOT NULL,
    version    integer     NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

-- validation: every check's result, kept per version.
CREATE TABLE validation_results (
    name         text        NOT NULL,
    version      integer     NOT NULL,
    passed       boolean     NOT NULL,
    checks       jsonb       NOT NULL,
    suites       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    validated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- promotion: what it knows of each version, and the stage it decided.
CREATE TABLE promotion_versions (
    name             text        NOT NULL,
    version          integer     NOT NULL,
    stage            text        NOT NULL DEFAULT 'none'
                                 CHECK (stage IN ('none', 'staging', 'production', 'archived')),
    sha256           text        NOT NULL,
    artifact_uri     text        NOT NULL,
    registered_by    text,
    correlation_id   uuid,
    validated        boolean     NOT NULL DEFAULT false,
    -- 'rejected': never promotable (failed validation, quarantined or rolled back).
    blocked          text,
    -- Set when it left production because a newer champion took over: a rollback target.
    superseded_at    timestamptz,
    previous_champion integer,
    stage_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
-- One champion per model, whatever the consumers do.
CREATE UNIQUE INDEX promotion_one_champion ON promotion_versions (name) WHERE stage = 'production';

CREATE TABLE approvals (
    name         text        NOT NULL,
    version      integer     NOT NULL,
    to_stage     text        NOT NULL,
    actor        text        NOT NULL,
    reason       text,
    event_id     uuid        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version, to_stage, actor)
);

-- archival: the facts retention rules need, learned from events.
CREATE TABLE archival_versions (
    name           text        NOT NULL,
    version        integer     NOT NULL,
    stage          text        NOT NULL DEFAULT 'none',
    artifact_uri   text,
    correlation_id uuid,
    staged_at      timestamptz,
    superseded_at  timestamptz,
    rejected_at    timestamptz,
    archived_at    timestamptz,
    archive_uri    text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
CREATE INDEX archival_due_rejected ON archival_versions (rejected_at) WHERE archived_at IS NULL AND rejected_at IS NOT NULL;
CREATE INDEX archival_due_staging ON archival_versions (staged_at) WHERE archived_at IS NULL AND stage = 'staging';
