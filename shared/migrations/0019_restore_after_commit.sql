-- An approved restore is recorded here by the transaction that decides it; the artifact comes
-- back from cold storage after that commits (no S3 call inside an open transaction), and a
-- second transaction makes the version movable again and emits model.restored with what is
-- kept here (the request, its time and the audit evidence, who sent it included).

ALTER TABLE archival_versions
    ADD COLUMN restore_requested_at timestamptz,
    ADD COLUMN restore_request      jsonb;

CREATE INDEX archival_restore_pending ON archival_versions (restore_requested_at)
    WHERE restore_requested_at IS NOT NULL;
