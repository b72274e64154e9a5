-- Issue 12: the read model follows every contacts.events.v1 event in per-contact version
-- order. The contact's version replaces the updated_at-based check: an event at or below the
-- version a profile holds changes nothing (replays, redeliveries, a rebuild from Kafka).

-- NULL until the first contact event is applied (a row made by a shop event alone).
ALTER TABLE profiles ADD COLUMN version bigint;
ALTER TABLE profiles DROP COLUMN contact_updated_at;
ALTER TABLE profiles ADD COLUMN score bigint NOT NULL DEFAULT 0;
-- The current consent per purpose, e.g. {"marketing": {"state": "granted", "since": "...",
-- "source": "api"}}; a purpose never asked is absent.
ALTER TABLE profiles ADD COLUMN consents jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE profiles ADD COLUMN suppressed boolean NOT NULL DEFAULT false;
ALTER TABLE profiles ADD COLUMN suppression_reason text;

-- A contact deleted or erased: its profile and orders are gone; this row (no personal data)
-- keeps a late or replayed event about it from bringing the contact back. Contact ids are
-- never reused, so a tombstone is final.
CREATE TABLE contact_tombstones (
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    version       bigint      NOT NULL,
    reason        text        NOT NULL CHECK (reason IN ('deleted', 'erased')),
    removed_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, contact_id)
);
