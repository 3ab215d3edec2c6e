-- Long-running operations (AIP-151) of the service whose schema this is
-- (crm_platform::operations). Unqualified names: applied in every service's schema.
--
-- `state` moves QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED; a RUNNING row belongs to
-- the worker named in `lease_owner` until `lease_expire_time`, which the worker keeps renewing,
-- so a row whose lease ran out belongs to a process that died and is taken over.
CREATE TABLE IF NOT EXISTS operations (
    id                 uuid        PRIMARY KEY,
    kind               text        NOT NULL,
    state              text        NOT NULL
        CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    request            bytea       NOT NULL,
    stage              text        NOT NULL DEFAULT '',
    items_done         bigint      NOT NULL DEFAULT 0,
    items_total        bigint,
    cancel_requested   boolean     NOT NULL DEFAULT false,
    requested_by_kind  integer     NOT NULL,
    requested_by_id    text        NOT NULL,
    response           bytea,
    error              bytea,
    attempts           integer     NOT NULL DEFAULT 0,
    lease_owner        uuid,
    lease_expire_time  timestamptz,
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    end_time           timestamptz
);
-- Workers look for queued work and for running work whose lease expired.
CREATE INDEX IF NOT EXISTS operations_claimable_idx
    ON operations (create_time) WHERE state IN ('QUEUED', 'RUNNING');
-- Retention purges finished operations by age.
CREATE INDEX IF NOT EXISTS operations_end_time_idx
    ON operations (end_time) WHERE end_time IS NOT NULL;
