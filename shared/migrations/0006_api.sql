-- api: bearer tokens (only their SHA-256 is stored), the key that signs pagination cursors, and
-- a notification whenever a model's champion changes, so the production endpoint's in-process
-- cache is dropped the moment the view it was read from changes.

CREATE TABLE api_tokens (
    id           bigserial   PRIMARY KEY,
    -- the identity: the `actor` of the events the token causes
    name         text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role         text        NOT NULL CHECK (role IN ('reader', 'publisher', 'approver', 'admin')),
    token_sha256 text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_by_name ON api_tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE api_secrets (
    name       text        PRIMARY KEY,
    value      bytea       NOT NULL CHECK (length(value) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION api_notify_champion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('modelreg_champion', NEW.name);
    RETURN NULL;
END
$$;

CREATE TRIGGER view_models_champion_inserted AFTER INSERT ON view_models
    FOR EACH ROW EXECUTE FUNCTION api_notify_champion();
CREATE TRIGGER view_models_champion_changed AFTER UPDATE ON view_models
    FOR EACH ROW WHEN (OLD.champion IS DISTINCT FROM NEW.champion
                       OR OLD.champion_seq IS DISTINCT FROM NEW.champion_seq)
    EXECUTE FUNCTION api_notify_champion();
