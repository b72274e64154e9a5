-- campaigns: targeted messages, drafts first. Sends and stats come with the sending issue.

CREATE TABLE campaigns (
    workspace_id  uuid        NOT NULL,
    id            uuid        NOT NULL,
    name          text        NOT NULL,
    segment_ids   text[]      NOT NULL,  -- recipients are the union of these segments
    subject       text        NOT NULL,
    body_text     text        NOT NULL,
    status        smallint    NOT NULL,  -- nudge.campaigns.v1.CampaignStatus
    scheduled_at  timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
-- Keyset pagination, newest first.
CREATE INDEX campaigns_by_created ON campaigns (workspace_id, created_at DESC, id DESC);
