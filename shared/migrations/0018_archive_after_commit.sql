-- Archival moves an artifact to cold storage after the transaction that decided to archive it,
-- never inside one (an S3 copy of gigabytes would hold the model's rows and locks): the
-- decision is recorded here with what model.archived will say, then the artifact moves, then
-- a second transaction marks the version archived and emits model.archived. A decided archive
-- left unfinished by a crash or an S3 outage is finished by the next pass.

ALTER TABLE archival_versions
    ADD COLUMN archive_requested_at timestamptz,
    ADD COLUMN archive_reason       text,
    ADD COLUMN archive_restorable   boolean,
    ADD COLUMN archive_from_stage   text;

CREATE INDEX archival_archive_pending ON archival_versions (archive_requested_at)
    WHERE archive_requested_at IS NOT NULL AND archived_at IS NULL;
