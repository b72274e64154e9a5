-- delivery: the message ledger. One row per message id; the row is claimed before the SMTP
-- hand-off, so a redelivered request never mails the same recipient twice.

CREATE TABLE messages (
    message_id    uuid PRIMARY KEY,
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    kind          smallint    NOT NULL,
    campaign_id   text        NOT NULL DEFAULT '',
    workflow_id   text        NOT NULL DEFAULT '',
    -- 1 claimed (hand-off in progress or interrupted), 2 sent, 3 skipped, 4 bounced,
    -- 5 failed, 6 retry (a transient failure before the server accepted it: may be claimed again)
    status        smallint    NOT NULL,
    detail        text        NOT NULL DEFAULT '',
    attempts      integer     NOT NULL DEFAULT 1,
    claimed_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX messages_workspace ON messages (workspace_id, claimed_at);
