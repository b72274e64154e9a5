-- segmentation: a read model of every contact, built from contacts.events.v1 and
-- shop.events.v1. Nothing here is the system of record; it can be rebuilt from Kafka.

-- One row per contact. A row may be created by a shop event before the contact's own
-- ContactCreated arrives (different topics are not ordered): then email is NULL until it does.
CREATE TABLE profiles (
    workspace_id        uuid        NOT NULL,
    contact_id          uuid        NOT NULL,
    email               text,
    vip                 boolean     NOT NULL DEFAULT false,
    tags                text[]      NOT NULL DEFAULT '{}',
    attributes          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    signed_up_at        timestamptz,
    contact_updated_at  timestamptz,  -- version of the last contact snapshot applied
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, contact_id)
);

-- Orders as the shop reported them. Only 'completed' orders count in the segment rules;
-- placed_at is NULL when a cancellation arrived before the placement.
CREATE TABLE orders (
    workspace_id  uuid        NOT NULL,
    order_id      text        NOT NULL,
    contact_id    uuid        NOT NULL,
    placed_at     timestamptz,
    total_minor   bigint,
    currency      text,
    status        text        NOT NULL CHECK (status IN ('completed', 'cancelled', 'refunded')),
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, order_id)
);
-- The per-contact aggregates the rules read (count, first and last order time).
CREATE INDEX orders_completed_by_contact ON orders (workspace_id, contact_id, placed_at)
    WHERE status = 'completed';
