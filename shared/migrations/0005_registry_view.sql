-- The registry view: what the API and UI read. A projection of `registry.audit` kept by the
-- audit writer in the same transaction as the audit log, so `modelreg replay` can rebuild it
-- from the topic alone and compare.

CREATE TABLE view_models (
    name           text        PRIMARY KEY,
    champion       integer,
    latest_version integer     NOT NULL DEFAULT 0,
    version_count  integer     NOT NULL DEFAULT 0,
    -- audit seq of the last change to the champion: the production endpoint's ETag
    champion_seq   bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

CREATE TABLE view_versions (
    name           text        NOT NULL,
    version        integer     NOT NULL,
    stage          text        NOT NULL DEFAULT 'none',
    status         text        NOT NULL DEFAULT 'registered',
    sha256         text,
    size_bytes     bigint,
    format         text,
    artifact_uri   text,
    source_uri     text,
    archive_uri    text,
    run_id         text,
    metrics        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    params         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    tags           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    dataset        jsonb,
    signature      jsonb,
    description    text,
    registered_by  text,
    correlation_id uuid,
    checks         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    reasons        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_seq       bigint      NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX view_versions_by_stage ON view_versions (stage, name);
CREATE INDEX view_versions_by_tags ON view_versions USING gin (tags jsonb_path_ops);

CREATE TABLE view_stage_changes (
    seq        bigint      PRIMARY KEY,
    name       text        NOT NULL,
    version    integer     NOT NULL,
    from_stage text,
    to_stage   text        NOT NULL,
    reason     text,
    actor      text        NOT NULL,
    evidence   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL
);
CREATE INDEX view_stage_changes_by_version ON view_stage_changes (name, version, seq);
CREATE INDEX view_stage_changes_by_time ON view_stage_changes (name, at);

CREATE TABLE view_evaluations (
    seq         bigint      PRIMARY KEY,
    name        text        NOT NULL,
    version     integer     NOT NULL,
    suite       text        NOT NULL,
    environment text        NOT NULL,
    metrics     jsonb       NOT NULL,
    passed      boolean,
    evaluator   text,
    dataset     jsonb,
    at          timestamptz NOT NULL
);
CREATE INDEX view_evaluations_by_version ON view_evaluations (name, version, seq);
