-- Issue 12, contacts and tags.

-- Custom attributes a workspace declared, with their type: contacts carry only these.
CREATE TABLE attribute_definitions (
    workspace_id  uuid        NOT NULL REFERENCES workspaces (id),
    name          text        NOT NULL,
    type          smallint    NOT NULL,  -- contacts.proto AttributeType
    description   text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

-- Score deltas applied with an idempotency key: the same key again answers this result.
-- Removed with their contact (nothing personal in them, but nothing to answer for either).
CREATE TABLE score_adjustments (
    workspace_id     uuid        NOT NULL,
    idempotency_key  text        NOT NULL,
    contact_id       uuid        NOT NULL,
    delta            bigint      NOT NULL,
    score            bigint      NOT NULL,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, idempotency_key),
    FOREIGN KEY (workspace_id, contact_id) REFERENCES contacts (workspace_id, id) ON DELETE CASCADE
);

-- ListContacts pages by (created_at, id) within a workspace.
CREATE INDEX contacts_created_order ON contacts (workspace_id, created_at, id);
-- Tag filters (@>, &&) of lists and bulk changes.
CREATE INDEX contacts_tags ON contacts USING gin (tags);
