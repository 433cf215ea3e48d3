-- promotion: a directory artifact's manifest (shared/manifest.py, canonical text), as it came
-- on model.ingested, so the integrity check before production names each file that changed,
-- went missing or appeared. NULL for a single-file artifact (its sha256 is the file's).
ALTER TABLE promotion_versions ADD COLUMN manifest text;
