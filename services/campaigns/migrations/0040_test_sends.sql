-- campaigns, issue 15 (content): every test send of a campaign, so that test sends can be
-- limited per campaign and hour (a test send goes to any address the caller names, without
-- consent checks: unlimited, it would be a way to spam) and so that who was sent what stays
-- on record. The address is the manager's own, not a contact's.
CREATE TABLE test_sends (
    workspace_id  uuid        NOT NULL,
    campaign_id   uuid        NOT NULL,
    message_id    uuid        NOT NULL,
    email         text        NOT NULL,
    variant       smallint    NOT NULL DEFAULT 0,
    sent_at       timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, campaign_id, message_id),
    FOREIGN KEY (workspace_id, campaign_id) REFERENCES campaigns (workspace_id, id)
);
CREATE INDEX test_sends_by_time ON test_sends (workspace_id, campaign_id, sent_at);
