-- Erasures (issue 12, docs/privacy.md): which contact was erased when, and at which version,
-- so that erasing it again answers the same result and an export of its id says "erased,
-- nothing held" rather than "never existed". No personal data: the contact's id is random,
-- and the address survives only as the suppression list's keyed hash.
CREATE TABLE erasures (
    workspace_id  uuid        NOT NULL REFERENCES workspaces (id),
    erased_id     uuid        NOT NULL,  -- the contact's id (not named contact_id on purpose:
                                         -- services/common/privacy.py exports and deletes
                                         -- every table with a contact_id column)
    version       bigint      NOT NULL,  -- the version ContactErased carried
    erased_at     timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, erased_id)
);
