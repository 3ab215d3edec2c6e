-- The change feed moves onto the platform's outbox (crm_platform::feed, platform migration
-- 1000002_change_events.sql, which runs after this one). customer.changes is renamed and
-- reshaped in place into the platform's change_events rather than copied: every event keeps its
-- sequence number, so the resume tokens consumers hold stay valid, and the sequence goes on from
-- where it was. The platform migration then finds the table (and its indexes) already there.
-- A test (tests/it/feed_migration.rs) checks that the result has the platform table's shape.

ALTER TABLE customer.changes RENAME TO change_events;
ALTER SEQUENCE customer.changes_seq_seq RENAME TO change_events_seq_seq;
ALTER TABLE customer.change_events RENAME CONSTRAINT changes_pkey TO change_events_pkey;
ALTER INDEX customer.changes_time_idx RENAME TO change_events_time_idx;
DROP INDEX customer.changes_customer_idx;

ALTER TABLE customer.change_events RENAME COLUMN customer_id TO resource_id;
-- Events written before versions were kept read as version 0.
UPDATE customer.change_events SET version = 0 WHERE version IS NULL;
ALTER TABLE customer.change_events
    ADD COLUMN resource_type text NOT NULL DEFAULT 'crm.customer.v1.Customer',
    ALTER COLUMN resource_id TYPE text USING resource_id::text,
    ALTER COLUMN merged_into_id TYPE text USING merged_into_id::text,
    ALTER COLUMN version SET NOT NULL,
    ALTER COLUMN actor_kind DROP DEFAULT,
    ALTER COLUMN actor_id DROP DEFAULT;
ALTER TABLE customer.change_events ALTER COLUMN resource_type DROP DEFAULT;

CREATE INDEX change_events_resource_idx ON customer.change_events (resource_type, resource_id);
