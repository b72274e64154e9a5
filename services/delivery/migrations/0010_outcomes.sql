-- delivery: every SMTP outcome (issue 14). Statuses are the contract's MessageStatus
-- numbers: 6 is now DEFERRED (was RETRY), 7 UNKNOWN, 8 QUEUED (accepted, sending paused).

-- A message to hand over again later: a deferred one (4xx, a broken connection) when
-- due_at comes, or a transactional one reported UNKNOWN (sent again with the same
-- Message-ID). The request itself is kept (the Kafka record is committed and gone).
-- Transactional requests get their row at the claim, with no due_at: the sweeper sets one
-- when a crash left the message CLAIMED.
CREATE TABLE pending_sends (
    message_id        uuid PRIMARY KEY REFERENCES messages (message_id) ON DELETE CASCADE,
    workspace_id      uuid        NOT NULL,
    contact_id        uuid        NOT NULL,
    due_at            timestamptz,
    first_attempt_at  timestamptz NOT NULL,
    envelope          bytea       NOT NULL
);
CREATE INDEX pending_sends_due ON pending_sends (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX pending_sends_contact ON pending_sends (workspace_id, contact_id);

-- The sweeper looks for claims older than the timeout: only CLAIMED rows are indexed.
CREATE INDEX messages_claimed ON messages (updated_at) WHERE status = 1;
