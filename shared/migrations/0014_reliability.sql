-- Reliability (issue 11 §3): parked outbox rows hold their model back until ops act, and the
-- processed-event ids are pruned once Kafka can no longer redeliver their events.

-- Why Kafka refused a parked row (shared/outbox_policy.py), and what ops did with it. A parked
-- row holds back the later rows of its model (same service and key) so one model's events
-- never leave out of order. `modelreg dlq outbox retry` moves it back into the outbox under
-- its own id (so it goes first again) and deletes it here; `discard` keeps it here as
-- 'discarded', and its model's later rows flow on.
ALTER TABLE outbox_parked
    ADD COLUMN reason       text NOT NULL DEFAULT 'refused'
        CHECK (reason IN ('refused', 'too_large', 'unknown_topic', 'authorization', 'serialization')),
    ADD COLUMN state        text NOT NULL DEFAULT 'parked' CHECK (state IN ('parked', 'discarded')),
    ADD COLUMN discarded_at timestamptz,
    ADD COLUMN discarded_by text,
    ADD CONSTRAINT outbox_parked_discard_recorded
        CHECK ((state = 'discarded') = (discarded_at IS NOT NULL AND discarded_by IS NOT NULL));
-- The relay looks for a parked row of each key it is about to send.
CREATE INDEX outbox_parked_holding ON outbox_parked (service, key) WHERE state = 'parked';

-- Pruning deletes one consumer's oldest ids in small batches (shared/housekeeping.py).
CREATE INDEX processed_events_by_age ON processed_events (consumer, processed_at);
GRANT DELETE ON processed_events TO modelreg_service;
