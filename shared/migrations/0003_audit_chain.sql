-- audit: the head of the audit log's hash chain.
-- One row. Every append locks it FOR UPDATE, so writers on any partition or instance extend
-- one linear chain; and it records the last row, so deleting the newest rows is detected.

CREATE TABLE audit_chain_head (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    last_seq   bigint      NOT NULL CHECK (last_seq >= 0),
    last_hash  text        NOT NULL CHECK (last_hash ~ '^[0-9a-f]{64}$'),
    row_count  bigint      NOT NULL CHECK (row_count >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO audit_chain_head (id, last_seq, last_hash, row_count)
SELECT true,
       coalesce(max(seq), 0),
       coalesce((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), repeat('0', 64)),
       count(*)
FROM audit_log;
