-- Request ids remembered for AIP-155 replays (crm_platform::idempotency).
--
-- Platform migrations are applied in every service's schema: the service's pool sets
-- search_path to that schema, so the names here are deliberately unqualified. Versions from
-- 1000001 on are the platform's; a service numbers its own from 0001.
CREATE TABLE IF NOT EXISTS request_ids (
    method       text        NOT NULL,
    request_id   text        NOT NULL,
    request_hash bytea       NOT NULL,
    response     bytea,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (method, request_id)
);
CREATE INDEX IF NOT EXISTS request_ids_create_time_idx ON request_ids (create_time);
