-- promotion remembers each version's trace, so a QA result published without trace context
-- still lands in the version's one trace.
ALTER TABLE promotion_versions ADD COLUMN traceparent text;

-- The audit event behind each view row: replay matches rebuilt rows to live ones by it
-- (audit seqs are the live writer's, a rebuild has its own).
ALTER TABLE view_stage_changes ADD COLUMN event_id uuid;
ALTER TABLE view_evaluations ADD COLUMN event_id uuid;
CREATE UNIQUE INDEX view_stage_changes_event ON view_stage_changes (event_id);
CREATE UNIQUE INDEX view_evaluations_event ON view_evaluations (event_id);
