-- promotion reads, per batch, each model's rollback targets: found by index, however many
-- versions a model has.
CREATE INDEX promotion_restorable ON promotion_versions (name)
    WHERE stage = 'none' AND superseded_at IS NOT NULL AND blocked IS NULL;
