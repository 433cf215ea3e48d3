-- api: what the MLflow-compatible registry API (services/api/mlflow) keeps beside the registry
-- view. None of it decides anything: descriptions, tags and aliases other than the champion are
-- free labels; a registration made through MLflow is remembered from the moment its
-- `model.registered` is published until the view has the version (MLflow needs the version
-- number at once). Every label change is appended to mlflow_label_log with the token's name.

CREATE TABLE mlflow_models (
    name        text        PRIMARY KEY,
    description text        CHECK (length(description) <= 10000),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mlflow_model_tags (
    name  text NOT NULL,
    key   text NOT NULL CHECK (length(key) BETWEEN 1 AND 250),
    value text NOT NULL CHECK (length(value) <= 5000),
    PRIMARY KEY (name, key)
);

CREATE TABLE mlflow_version_labels (
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version >= 1),
    description text        CHECK (length(description) <= 10000),
    tags        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- The champion alias is the production stage (the view's champion), never a row here.
CREATE TABLE mlflow_aliases (
    name    text    NOT NULL,
    alias   text    NOT NULL CHECK (alias ~ '^[A-Za-z0-9_-]{1,255}$'),
    version integer NOT NULL CHECK (version >= 1),
    PRIMARY KEY (name, alias)
);

-- Version numbers handed out by MLflow's create-model-version: unique, so two clients never
-- get the same one; `event_id` is the model.registered it published (the version's
-- correlation id in the view, which tells it apart from a registration that took the number).
CREATE TABLE mlflow_registrations (
    name          text        NOT NULL,
    version       integer     NOT NULL CHECK (version >= 1),
    event_id      uuid        NOT NULL UNIQUE,
    source        text        NOT NULL,
    run_id        text,
    registered_by text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Who changed which label, when, from what to what: appended, never changed.
CREATE TABLE mlflow_label_log (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text        NOT NULL,
    action   text        NOT NULL,
    name     text        NOT NULL,
    version  integer,
    key      text,
    old      text,
    new      text
);
CREATE INDEX mlflow_label_log_by_model ON mlflow_label_log (name, id);

GRANT SELECT, INSERT, UPDATE, DELETE ON mlflow_models, mlflow_model_tags, mlflow_version_labels, mlflow_aliases,
    mlflow_registrations TO modelreg_api;
GRANT SELECT, INSERT ON mlflow_label_log TO modelreg_api;
GRANT USAGE ON SEQUENCE mlflow_label_log_id_seq TO modelreg_api;
