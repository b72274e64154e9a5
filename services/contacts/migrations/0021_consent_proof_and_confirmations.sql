-- Consent history as proof (issue 12): where the contact gave it (IP, browser), and an order of
-- its own, so that the current state is the latest record by when it was given (a record
-- back-dated by an import does not override a later one) with ties broken by arrival.
ALTER TABLE consent_events ADD COLUMN ip text NOT NULL DEFAULT '';
ALTER TABLE consent_events ADD COLUMN user_agent text NOT NULL DEFAULT '';
ALTER TABLE consent_events ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
-- GetConsentHistory pages newest first.
CREATE INDEX consent_events_history ON consent_events (workspace_id, contact_id, recorded_at DESC, seq DESC);

-- Double opt-in: a grant waiting for the click on its confirmation mail's link. The mail's
-- message id names it (the link delivery signs carries that id); a confirmed row is kept, so
-- that a second click finds it confirmed and grants nothing again.
CREATE TABLE consent_confirmations (
    workspace_id  uuid        NOT NULL,
    message_id    uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    purposes      smallint[]  NOT NULL,
    wording       text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    confirmed_at  timestamptz,
    PRIMARY KEY (workspace_id, message_id),
    FOREIGN KEY (workspace_id, contact_id) REFERENCES contacts (workspace_id, id) ON DELETE CASCADE
);

-- CountEligible joins consents by purpose over a whole workspace.
CREATE INDEX consents_by_purpose ON consents (workspace_id, purpose, contact_id);
