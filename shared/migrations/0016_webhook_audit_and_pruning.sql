-- Webhooks (services/webhooks): endpoint changes are audited, and old deliveries are pruned.
--
-- Creating or deleting an endpoint (the CLI, the API, MLflow's webhook API) writes a row here
-- in the same statement as the change. The webhooks service, which holds a signing key, turns
-- each row into a signed `registry.audit` record through its outbox and marks it audited in
-- the same transaction (the audit writer alone writes audit_log; the CLI and the API only ask,
-- as a dead letter's redrive does). No foreign key: a deletion's row outlives its endpoint.
-- The evidence names the endpoint's name, URL and subscription, never its secret.

CREATE TABLE webhook_endpoint_changes (
    id          bigserial   PRIMARY KEY,
    endpoint_id uuid        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('webhook_created', 'webhook_deleted')),
    actor       text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    evidence    jsonb       NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    audited_at  timestamptz
);
CREATE INDEX webhook_endpoint_changes_unaudited ON webhook_endpoint_changes (id) WHERE audited_at IS NULL;

-- Pruning: finished deliveries (and their attempts, by cascade) older than
-- MODELREG_WEBHOOKS_KEEP_DAYS, oldest first, in batches.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status <> 'pending';

GRANT SELECT, INSERT, UPDATE ON webhook_endpoint_changes TO modelreg_webhooks;
GRANT INSERT ON webhook_endpoint_changes TO modelreg_api;
GRANT USAGE ON SEQUENCE webhook_endpoint_changes_id_seq TO modelreg_webhooks, modelreg_api;
