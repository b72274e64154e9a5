-- delivery: the bounce (DSN, RFC 3464) and complaint (ARF, RFC 5965) reports received on the
-- inbound SMTP endpoint, one row per event they caused: its deterministic id is the primary
-- key, so a report received twice (a relay's retry, a provider sending it again) changes the
-- ledger and publishes its event once.

CREATE TABLE inbound_reports (
    event_id     uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL,
    message_id   uuid        NOT NULL,
    kind         text        NOT NULL,  -- 'hard_bounce', 'soft_bounce', 'complaint'
    received_at  timestamptz NOT NULL
);
CREATE INDEX inbound_reports_workspace ON inbound_reports (workspace_id, received_at);
