-- api: separation of duties for tokens. An `evaluator` role (reports QA results, nothing else);
-- each token is scoped to model-name globs and expires. Tokens made before this keep every
-- model in scope and get the default 90 days from now, so no running client breaks at once.

ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('reader', 'publisher', 'evaluator', 'approver', 'admin'));

ALTER TABLE api_tokens
    ADD COLUMN models     text[]      NOT NULL DEFAULT ARRAY['*']
        CHECK (cardinality(models) BETWEEN 1 AND 32),
    ADD COLUMN expires_at timestamptz;
UPDATE api_tokens SET expires_at = now() + interval '90 days' WHERE expires_at IS NULL;
ALTER TABLE api_tokens ALTER COLUMN expires_at SET NOT NULL;
