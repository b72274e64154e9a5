-- The fan-out's checkpoints (issue 15, FANOUT): one row per (campaign, phase), written in the
-- same step as the batch it acknowledges, so that a restarted fan-out continues the stream it
-- began (the same as_of: the same audience) after the last contact whose records Kafka acked.
CREATE TABLE fanouts (
    workspace_id      uuid        NOT NULL,
    campaign_id       uuid        NOT NULL,
    phase             text        NOT NULL CHECK (phase IN ('all', 'sample', 'rest')),
    as_of             timestamptz NOT NULL,   -- the audience's evaluation time, fixed at start
    after_contact_id  uuid,                   -- the last contact done; NULL: none yet
    reached           bigint      NOT NULL DEFAULT 0,  -- recipients rows written
    requested         bigint      NOT NULL DEFAULT 0,  -- produced to delivery.requests.v1
    excluded          bigint      NOT NULL DEFAULT 0,
    deferred          bigint      NOT NULL DEFAULT 0,  -- written with a due_at still ahead
    done_at           timestamptz,                     -- the stream ended
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, campaign_id, phase),
    FOREIGN KEY (workspace_id, campaign_id) REFERENCES campaigns (workspace_id, id)
);

-- The rows the driver still has to send when they fall due (frequency-cap DEFER, local time).
CREATE INDEX recipients_waiting ON recipients (workspace_id, campaign_id, due_at)
    WHERE excluded IS NULL AND requested_at IS NULL;

-- The driver's poll: the campaigns in status SENDING (3).
CREATE INDEX campaigns_sending ON campaigns (updated_at) WHERE status = 3;
