-- delivery, issue 17: what tracking saw of each mail (tracking.events.v1), for the story of
-- the mail (services/delivery/story.py, services/delivery/tracking_log.py). Keyed by the
-- event id: a redelivered event is kept once. No contact id and no user agent: the row says
-- what happened to a message, never who read it where.
CREATE TABLE message_tracking (
    event_id        text        PRIMARY KEY,
    workspace_id    uuid        NOT NULL,
    message_id      uuid        NOT NULL,
    at              timestamptz NOT NULL,
    kind            smallint    NOT NULL,  -- the contract's TrackingEventKind
    machine         boolean     NOT NULL DEFAULT false,
    machine_reason  text        NOT NULL DEFAULT '',
    url             text        NOT NULL DEFAULT ''
);
CREATE INDEX message_tracking_message ON message_tracking (workspace_id, message_id);
