-- Contract, second pass: owners and authors become crm.common.v1.Principal (kind + id), consent
-- channels take the shared crm.common.v1.Channel names, interactions without a direction say
-- NONE, change events carry a header, and every field change is kept in a history.

-- Owners: a kind beside the id. Owners set before kinds existed were users.
ALTER TABLE customer.customers ADD COLUMN owner_kind text;
UPDATE customer.customers SET owner_id = NULL WHERE owner_id = '';
UPDATE customer.customers SET owner_kind = 'USER' WHERE owner_id IS NOT NULL;
ALTER TABLE customer.customers ADD CONSTRAINT customers_owner_check
    CHECK ((owner_kind IS NULL) = (owner_id IS NULL));

ALTER TABLE customer.interactions ADD COLUMN owner_kind text NOT NULL DEFAULT '';
UPDATE customer.interactions SET owner_kind = 'USER' WHERE owner_id <> '';

-- Authors: the kind of the caller's token (USER or SERVICE). Rows written before kept only the
-- subject; they were users.
ALTER TABLE customer.customers
    ADD COLUMN created_by_kind text NOT NULL DEFAULT 'USER',
    ADD COLUMN updated_by_kind text NOT NULL DEFAULT 'USER';
ALTER TABLE customer.consents ADD COLUMN recorded_by_kind text NOT NULL DEFAULT 'USER';
ALTER TABLE customer.interactions ADD COLUMN created_by_kind text NOT NULL DEFAULT 'USER';
ALTER TABLE customer.merges ADD COLUMN merged_by_kind text NOT NULL DEFAULT 'USER';

-- Consent channels: CONSENT_CHANNEL_EMAIL becomes CHANNEL_EMAIL (same numbers).
UPDATE customer.consents SET channel = substr(channel, length('CONSENT_') + 1)
    WHERE channel LIKE 'CONSENT\_CHANNEL\_%';

-- Interactions stored without a direction: NONE (the server never returns UNSPECIFIED).
UPDATE customer.interactions SET direction = 'NONE' WHERE direction IN ('', 'UNSPECIFIED');

-- Change events: the header's version, changed paths and actor. Events written before have no
-- version (read as 0), no paths, and a user actor whose id is unknown.
ALTER TABLE customer.changes
    ADD COLUMN version bigint,
    ADD COLUMN changed_paths text[] NOT NULL DEFAULT '{}',
    ADD COLUMN actor_kind text NOT NULL DEFAULT 'USER',
    ADD COLUMN actor_id text NOT NULL DEFAULT '';

-- ListCustomers with show_deleted lists erased customers, whose display_name is NULL: order by
-- the coalesced name (as email already is) so keyset pages never skip them.
CREATE INDEX customers_display_name_order_idx
    ON customer.customers (coalesce(display_name, ''), id);

-- ListMergeRecords pages over every merge, oldest first.
CREATE INDEX merges_time_idx ON customer.merges (merge_time, id);

-- Field history: one row per changed field path of every write that changes customer fields.
-- Values are the fields' proto3 JSON forms; NULL means the field was empty. Erased with the
-- customer.
CREATE TABLE customer.field_changes (
    id          bigserial   PRIMARY KEY,
    customer_id uuid        NOT NULL REFERENCES customer.customers (id),
    path        text        NOT NULL,
    old_value   jsonb,
    new_value   jsonb,
    actor_kind  text        NOT NULL,
    actor_id    text        NOT NULL,
    change_time timestamptz NOT NULL DEFAULT now(),
    -- The customer's version after the change.
    version     bigint      NOT NULL
);
-- Listed newest first; the changes of one write (one change_time) in the order recorded.
CREATE INDEX field_changes_customer_idx
    ON customer.field_changes (customer_id, change_time DESC, id);
