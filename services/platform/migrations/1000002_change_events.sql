-- Change feeds, both directions (crm_platform::feed).
--
-- change_events is the service's transactional outbox: one row per change, appended in the
-- writing transaction, read in `seq` order by the service's Watch RPCs. Sequence numbers are
-- taken at insert time but become visible at commit, so a reader can see N+1 before N; it waits
-- for the gap to fill and skips it only once it is older than any write transaction can be (a
-- rolled-back insert leaves a permanent gap). `seq` is the resume token.
--
-- consumer_checkpoints is where the service's durable consumers of other services' feeds keep
-- their position.
--
-- Unqualified names: applied in every service's schema (see 1000001_request_ids.sql).
CREATE TABLE IF NOT EXISTS change_events (
    seq            bigserial   PRIMARY KEY,
    -- Full name of the resource's message type, e.g. 'crm.customer.v1.Customer'.
    resource_type  text        NOT NULL,
    resource_id    text        NOT NULL,
    -- The crm.common.v1.ChangeType name, e.g. 'CHANGE_TYPE_UPDATED'.
    change_type    text        NOT NULL,
    -- The resource's version after the change.
    version        bigint      NOT NULL,
    changed_paths  text[]      NOT NULL DEFAULT '{}',
    merged_into_id text,
    -- crm.common.v1.PrincipalKind without its prefix ('USER', 'SERVICE', ...).
    actor_kind     text        NOT NULL,
    actor_id       text        NOT NULL,
    change_time    timestamptz NOT NULL DEFAULT now(),
    -- The resource as encoded protobuf right after the change; NULL for tombstones and once
    -- the resource's personal data is erased.
    snapshot       bytea
);
CREATE INDEX IF NOT EXISTS change_events_resource_idx ON change_events (resource_type, resource_id);
CREATE INDEX IF NOT EXISTS change_events_time_idx ON change_events (change_time);

CREATE TABLE IF NOT EXISTS consumer_checkpoints (
    -- The consumer's name, e.g. 'customer-changes'.
    consumer     text        PRIMARY KEY,
    -- The resume token of the last event handled; '' before the first one.
    resume_token text        NOT NULL DEFAULT '',
    -- Without a resume token: follow the feed from this time (set by a re-sync).
    start_time   timestamptz,
    update_time  timestamptz NOT NULL DEFAULT now()
);
