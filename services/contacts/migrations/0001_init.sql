-- contacts: the system of record for workspaces, API keys, contacts, consent and suppression.

CREATE TABLE workspaces (
    id                              uuid PRIMARY KEY,
    name                            text        NOT NULL,
    slug                            text        NOT NULL UNIQUE,
    consent_required_for_campaigns  boolean     NOT NULL DEFAULT true,
    created_at                      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id        text PRIMARY KEY,
    workspace_id  uuid        NOT NULL REFERENCES workspaces (id),
    key_hash      text        NOT NULL,  -- sha256 of the whole key; the key itself is never stored
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE contacts (
    workspace_id  uuid        NOT NULL REFERENCES workspaces (id),
    id            uuid        NOT NULL,
    email         text        NOT NULL,
    external_id   text,
    first_name    text        NOT NULL DEFAULT '',
    last_name     text        NOT NULL DEFAULT '',
    locale        text        NOT NULL DEFAULT '',
    time_zone     text        NOT NULL DEFAULT '',
    birthday_year  smallint,
    birthday_month smallint,
    birthday_day   smallint,
    signed_up_at  timestamptz,
    attributes    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    vip           boolean     NOT NULL DEFAULT false,
    tags          text[]      NOT NULL DEFAULT '{}',
    score         bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE UNIQUE INDEX contacts_email_key ON contacts (workspace_id, lower(email));
CREATE UNIQUE INDEX contacts_external_id_key ON contacts (workspace_id, external_id)
    WHERE external_id IS NOT NULL;

-- Every consent change, as it happened: who, when, how, and the wording shown.
CREATE TABLE consent_events (
    id            uuid PRIMARY KEY,
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    purpose       smallint    NOT NULL,
    status        smallint    NOT NULL,
    source        smallint    NOT NULL,
    wording       text        NOT NULL DEFAULT '',
    actor         text        NOT NULL DEFAULT '',
    recorded_at   timestamptz NOT NULL,
    FOREIGN KEY (workspace_id, contact_id) REFERENCES contacts (workspace_id, id)
);
CREATE INDEX consent_events_contact ON consent_events (workspace_id, contact_id, recorded_at);

-- The current state per purpose, kept with the history in one transaction.
CREATE TABLE consents (
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    purpose       smallint    NOT NULL,
    status        smallint    NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, contact_id, purpose),
    FOREIGN KEY (workspace_id, contact_id) REFERENCES contacts (workspace_id, id)
);

-- Addresses never to be mailed again in this workspace.
CREATE TABLE suppressions (
    workspace_id  uuid        NOT NULL,
    email         text        NOT NULL,  -- lower-cased
    reason        smallint    NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, email)
);

-- Shop events accepted, by the platform's idempotency key: a retried call is a no-op.
CREATE TABLE ingested_events (
    workspace_id     uuid        NOT NULL,
    idempotency_key  text        NOT NULL,
    event_id         uuid        NOT NULL,
    contact_id       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, idempotency_key)
);
