-- The customer records service's schema. Every object is schema-qualified; the service's pool
-- runs with search_path = customer, so sqlx's _sqlx_migrations table lives here too.

-- Trigram matching for typo-tolerant search. pg_trgm is a trusted extension (PostgreSQL 13+):
-- the database owner may create it without superuser rights.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA customer;

CREATE TABLE customer.customers (
    id                   uuid        PRIMARY KEY,
    -- Bumped on every write; the etag and the cache's version.
    version              bigint      NOT NULL DEFAULT 1,
    state                text        NOT NULL DEFAULT 'ACTIVE'
                         CHECK (state IN ('ACTIVE', 'DELETED', 'MERGED', 'ERASED')),
    -- Personal data: NULL or empty once erased.
    display_name         text,
    email                text,
    given_name           text,
    family_name          text,
    phone                text,
    company_name         text,
    lifecycle_stage      text        NOT NULL DEFAULT 'LEAD',
    owner_id             text,
    source               text,
    tags                 text[]      NOT NULL DEFAULT '{}',
    -- Custom attributes as plain JSON values (filterable); keys holding timestamps are listed
    -- in attribute_timestamps because JSON has no timestamp type.
    attributes           jsonb       NOT NULL DEFAULT '{}',
    attribute_timestamps text[]      NOT NULL DEFAULT '{}',
    contact_points       jsonb       NOT NULL DEFAULT '[]',
    addresses            jsonb       NOT NULL DEFAULT '[]',
    merged_into_id       uuid        REFERENCES customer.customers (id),
    delete_time          timestamptz,
    create_time          timestamptz NOT NULL DEFAULT now(),
    update_time          timestamptz NOT NULL DEFAULT now(),
    created_by           text        NOT NULL,
    updated_by           text        NOT NULL,
    search_text          text        GENERATED ALWAYS AS (
        lower(coalesce(display_name, '') || ' ' || coalesce(given_name, '') || ' ' ||
              coalesce(family_name, '') || ' ' || coalesce(email, '') || ' ' ||
              coalesce(company_name, '') || ' ' || coalesce(phone, ''))
    ) STORED,
    search_vector        tsvector    GENERATED ALWAYS AS (
        to_tsvector('simple',
            coalesce(display_name, '') || ' ' || coalesce(given_name, '') || ' ' ||
            coalesce(family_name, '') || ' ' || coalesce(company_name, '') || ' ' ||
            replace(replace(coalesce(email, ''), '@', ' '), '.', ' '))
    ) STORED
);

-- Email is unique among active customers only: deleted, merged and erased records free it.
CREATE UNIQUE INDEX customers_active_email_key
    ON customer.customers (email) WHERE state = 'ACTIVE' AND email IS NOT NULL;
CREATE INDEX customers_phone_idx ON customer.customers (phone) WHERE phone IS NOT NULL;
-- Keyset pagination for each accepted order_by key, with the id as tie-breaker.
CREATE INDEX customers_create_time_idx ON customer.customers (create_time, id);
CREATE INDEX customers_update_time_idx ON customer.customers (update_time, id);
CREATE INDEX customers_display_name_idx ON customer.customers (display_name, id);
CREATE INDEX customers_email_order_idx ON customer.customers (coalesce(email, ''), id);
CREATE INDEX customers_tags_idx ON customer.customers USING gin (tags);
CREATE INDEX customers_attributes_idx ON customer.customers USING gin (attributes jsonb_path_ops);
CREATE INDEX customers_search_vector_idx ON customer.customers USING gin (search_vector);
CREATE INDEX customers_search_trgm_idx
    ON customer.customers USING gin (search_text customer.gin_trgm_ops);

-- Every consent decision; the latest per channel is the customer's current consent.
CREATE TABLE customer.consents (
    id           bigserial   PRIMARY KEY,
    customer_id  uuid        NOT NULL REFERENCES customer.customers (id),
    channel      text        NOT NULL,
    status       text        NOT NULL,
    legal_basis  text        NOT NULL,
    source       text        NOT NULL,
    capture_time timestamptz NOT NULL,
    record_time  timestamptz NOT NULL DEFAULT now(),
    recorded_by  text        NOT NULL
);
CREATE INDEX consents_customer_idx ON customer.consents (customer_id, record_time DESC, id DESC);

CREATE TABLE customer.interactions (
    id          uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL REFERENCES customer.customers (id),
    type        text        NOT NULL,
    direction   text        NOT NULL,
    subject     text        NOT NULL,
    body        text        NOT NULL DEFAULT '',
    occur_time  timestamptz NOT NULL,
    duration_ms bigint,
    owner_id    text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL
);
CREATE INDEX interactions_customer_idx ON customer.interactions (customer_id, occur_time DESC, id DESC);

CREATE TABLE customer.merges (
    id          uuid        PRIMARY KEY,
    survivor_id uuid        NOT NULL REFERENCES customer.customers (id),
    merged_ids  uuid[]      NOT NULL,
    merge_time  timestamptz NOT NULL DEFAULT now(),
    merged_by   text        NOT NULL
);
CREATE INDEX merges_survivor_idx ON customer.merges (survivor_id, merge_time DESC);

-- The change feed. Sequence numbers are taken at insert time but become visible at commit, so a
-- reader can see N+1 before N: it waits for the gap to fill and skips it only once it is older
-- than any write transaction can be (a rolled-back insert leaves a permanent gap).
CREATE TABLE customer.changes (
    seq            bigserial   PRIMARY KEY,
    customer_id    uuid        NOT NULL,
    change_type    text        NOT NULL,
    merged_into_id uuid,
    -- The customer as encoded protobuf right after the change; NULL once erased.
    snapshot       bytea,
    change_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_customer_idx ON customer.changes (customer_id);
CREATE INDEX changes_time_idx ON customer.changes (change_time);

-- Request-id idempotency (see crm_platform::idempotency).
CREATE TABLE customer.request_ids (
    method       text        NOT NULL,
    request_id   text        NOT NULL,
    request_hash bytea       NOT NULL,
    response     bytea,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (method, request_id)
);
CREATE INDEX request_ids_create_time_idx ON customer.request_ids (create_time);
