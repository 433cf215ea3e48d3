-- Durable webhooks (services/webhooks): endpoints, their deliveries (an outbox the delivery
-- worker drains) and every attempt. The consumer records a batch's deliveries in the batch's
-- transaction; the worker claims due ones in short transactions and sends them outside any.
--
-- Per endpoint and model, deliveries go out in `id` order: one is sent only when no earlier
-- delivery of the same endpoint and model is still pending. `message_id` is the idempotency key
-- receivers see (`webhook-id`): the event id, the same on every retry and replay.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'modelreg_webhooks') THEN
        BEGIN
            CREATE ROLE modelreg_webhooks NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it just now
        END;
    END IF;
    IF NOT pg_has_role(current_user, 'modelreg_webhooks', 'MEMBER') THEN
        GRANT modelreg_webhooks TO CURRENT_USER;
    END IF;
    IF NOT pg_has_role('modelreg_webhooks', 'modelreg_service', 'MEMBER') THEN
        GRANT modelreg_service TO modelreg_webhooks;
    END IF;
END
$roles$;

CREATE TABLE webhook_endpoints (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL,
    url             text        NOT NULL,
    description     text,
    secret          text        NOT NULL,       -- whsec_... (MLflow endpoints: the secret given)
    format          text        NOT NULL DEFAULT 'standard' CHECK (format IN ('standard', 'mlflow')),
    topics          text[]      NOT NULL,       -- event types, or {*}
    models          text[]      NOT NULL DEFAULT '{*}',  -- model-name globs
    stages          text[]      NOT NULL DEFAULT '{}',   -- empty: any
    mlflow_events   text[]      NOT NULL DEFAULT '{}',   -- entity.action, for MLflow endpoints
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    failing_since   timestamptz,                -- first failed attempt since the last success
    disabled_at     timestamptz,
    disabled_reason text,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'disabled') = (disabled_at IS NOT NULL))
);

CREATE TABLE webhook_deliveries (
    id              bigserial   PRIMARY KEY,
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id      uuid        NOT NULL,
    event_id        uuid,                       -- the registry event (none for a test)
    topic           text        NOT NULL,
    model           text        NOT NULL,
    body            text        NOT NULL,
    kind            text        NOT NULL DEFAULT 'event' CHECK (kind IN ('event', 'replay', 'test')),
    replay_of       bigint      REFERENCES webhook_deliveries (id) ON DELETE SET NULL,
    requested_by    text,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,                -- a worker is sending it until then
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- One delivery per endpoint and event, however often the event is consumed.
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (endpoint_id, message_id) WHERE kind = 'event';
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_pending_in_order ON webhook_deliveries (endpoint_id, model, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id DESC);

CREATE TABLE webhook_attempts (
    id              bigserial   PRIMARY KEY,
    delivery_id     bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt         integer     NOT NULL,
    attempted_at    timestamptz NOT NULL,
    status_code     integer,                    -- none: no answer (refused, timed out, ...)
    latency_ms      double precision NOT NULL,
    error           text,
    response_excerpt text,
    retry_at        timestamptz                 -- when it is tried again (none: it is not)
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, id);

-- webhooks: its tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, webhook_deliveries, webhook_attempts TO modelreg_webhooks;
GRANT USAGE ON SEQUENCE webhook_deliveries_id_seq, webhook_attempts_id_seq TO modelreg_webhooks;

-- api: admins manage endpoints, read the log, ask for tests and replays (the worker sends them).
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints TO modelreg_api;
GRANT SELECT, INSERT ON webhook_deliveries TO modelreg_api;
GRANT SELECT ON webhook_attempts TO modelreg_api;
GRANT USAGE ON SEQUENCE webhook_deliveries_id_seq TO modelreg_api;
