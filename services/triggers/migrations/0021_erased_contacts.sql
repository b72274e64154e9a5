-- Contacts erased under privacy law: the engine ignores any later event about them (a
-- segment's REMOVAL exit, a late shop event), which would otherwise write their facts and
-- events back after the erasure. The column is not named contact_id on purpose: the
-- catalog scan of services/common/privacy.py exports and deletes tables with a contact_id,
-- and this pseudonymous marker must survive the erasure it records.
CREATE TABLE erased_contacts (
    workspace_id     uuid        NOT NULL,
    erased_contact   uuid        NOT NULL,
    erased_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, erased_contact)
);
