-- Per-service PostgreSQL roles: each service may write only its own tables, the audit writer
-- may only append to audit_log, and the API reads the view and writes only its tokens.
--
-- The roles are NOLOGIN: a service's pool switches to its role at connect time (`role` startup
-- parameter, shared/db.py `service_role`), so the rights hold even when the stack logs in as
-- its superuser. Production gives each service its own LOGIN user that is a member of (only)
-- its role; see README "An audit trail that does not trust the database".
--
-- Roles are cluster-wide and several databases (test runs) migrate at once, so every CREATE is
-- idempotent and tolerates losing a race to another database's migration.

DO $roles$
DECLARE
    wanted text[] := ARRAY['modelreg_service', 'modelreg_ingest', 'modelreg_validation',
                           'modelreg_promotion', 'modelreg_archival', 'modelreg_audit', 'modelreg_api'];
    r text;
BEGIN
    FOREACH r IN ARRAY wanted LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it just now
            END;
        END IF;
        -- The migrating (login) user must be able to SET ROLE to each; a superuser always can.
        IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
            EXECUTE format('GRANT %I TO %I', r, current_user);
        END IF;
    END LOOP;
    FOREACH r IN ARRAY wanted[2:] LOOP
        IF NOT pg_has_role(r, 'modelreg_service', 'MEMBER') THEN
            EXECUTE format('GRANT modelreg_service TO %I', r);
        END IF;
    END LOOP;
END
$roles$;

-- Every service: readiness checks and the delivery machinery (processed events, outbox).
GRANT SELECT ON schema_migrations TO modelreg_service;
GRANT SELECT, INSERT ON processed_events TO modelreg_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO modelreg_service;
GRANT SELECT, INSERT ON outbox_parked TO modelreg_service;
GRANT USAGE ON SEQUENCE outbox_id_seq TO modelreg_service;

-- ingest: the registry of record.
GRANT SELECT, INSERT, UPDATE, DELETE ON models, model_versions, ingest_claims TO modelreg_ingest;

-- validation: check results.
GRANT SELECT, INSERT, UPDATE, DELETE ON validation_results TO modelreg_validation;

-- promotion: what it knows of each version, evaluations, approvals, the stage history.
GRANT SELECT, INSERT, UPDATE, DELETE
    ON promotion_versions, evaluations, approvals, stage_history, promotion_deferred TO modelreg_promotion;
GRANT USAGE ON SEQUENCE evaluations_id_seq, stage_history_id_seq TO modelreg_promotion;

-- archival: retention facts.
GRANT SELECT, INSERT, UPDATE, DELETE ON archival_versions TO modelreg_archival;

-- audit: append-only log, its chain head, and the registry view it projects.
GRANT SELECT, INSERT ON audit_log TO modelreg_audit;
GRANT USAGE ON SEQUENCE audit_log_seq_seq TO modelreg_audit;
GRANT SELECT, UPDATE ON audit_chain_head TO modelreg_audit;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON view_models, view_versions, view_stage_changes, view_evaluations TO modelreg_audit;

-- api: reads the view and the log; writes only its tokens and its cursor-signing secret.
GRANT SELECT ON view_models, view_versions, view_stage_changes, view_evaluations, audit_log TO modelreg_api;
GRANT SELECT, INSERT, UPDATE ON api_tokens TO modelreg_api;
GRANT USAGE ON SEQUENCE api_tokens_id_seq TO modelreg_api;
GRANT SELECT, INSERT ON api_secrets TO modelreg_api;

-- Nobody but the owner gets anything else by default.
REVOKE ALL ON audit_log FROM PUBLIC;

-- audit_log is append-only for everyone, its owner included: an UPDATE, DELETE or TRUNCATE
-- raises. (A superuser can still disable triggers; signed checkpoints outside PostgreSQL are
-- what catch that: `modelreg audit verify`.)
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
