-- campaigns, issue 15: everything a campaign carries, its transitions, the workspace's
-- campaign settings, and one row per contact the fan-out reached.
--
-- Migration numbers of issue 15 by part (so that parallel work never collides):
-- 0010-0019 fan-out, 0020-0029 report, 0030-0039 lifecycle and scheduling, 0040-0049 content.

ALTER TABLE campaigns
    ADD COLUMN exclude_segment_ids text[]   NOT NULL DEFAULT '{}',
    ADD COLUMN tags_any            text[]   NOT NULL DEFAULT '{}',
    ADD COLUMN body_html           text     NOT NULL DEFAULT '',
    ADD COLUMN body_markdown       text     NOT NULL DEFAULT '',
    ADD COLUMN reply_to            text     NOT NULL DEFAULT '',
    ADD COLUMN purpose             smallint NOT NULL DEFAULT 2,  -- ConsentPurpose TARGETED_MESSAGES
    ADD COLUMN cap_action          smallint NOT NULL DEFAULT 1,  -- CapAction SKIP
    ADD COLUMN local_time          boolean  NOT NULL DEFAULT false,
    ADD COLUMN time_zone           text     NOT NULL DEFAULT '',
    ADD COLUMN ab_test             jsonb,                        -- AbTest as JSON, NULL: none
    ADD COLUMN holdout_percent     smallint NOT NULL DEFAULT 0,
    ADD COLUMN started_at          timestamptz,
    ADD COLUMN finished_at         timestamptz,
    ADD COLUMN status_reason       text     NOT NULL DEFAULT '';

-- Every status change, with who made it.
CREATE TABLE transitions (
    workspace_id  uuid        NOT NULL,
    campaign_id   uuid        NOT NULL,
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    from_status   smallint    NOT NULL,
    to_status     smallint    NOT NULL,
    actor         text        NOT NULL,
    note          text        NOT NULL DEFAULT '',
    at            timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, campaign_id, seq),
    FOREIGN KEY (workspace_id, campaign_id) REFERENCES campaigns (workspace_id, id)
);

-- Per workspace; a workspace without a row has the defaults (1 message per 30 days, UTC).
CREATE TABLE settings (
    workspace_id           uuid        PRIMARY KEY,
    frequency_cap_messages integer     NOT NULL DEFAULT 1,
    frequency_cap_days     integer     NOT NULL DEFAULT 30,
    time_zone              text        NOT NULL DEFAULT 'UTC',
    updated_at             timestamptz NOT NULL
);

-- One row per (campaign, contact) the fan-out reached: mailed (excluded IS NULL, message_id
-- is the deterministic id sent to delivery) or left out (excluded names the reason, the
-- hold-out included: excluded = 'holdout'). The
-- frequency cap counts a contact's mailed rows; the report's counters are columns added by
-- the report's migrations, updated idempotently from delivery and tracking events.
CREATE TABLE recipients (
    workspace_id  uuid        NOT NULL,
    campaign_id   uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    message_id    uuid        NOT NULL,
    variant       smallint    NOT NULL DEFAULT 0,  -- A/B variant from 0; -1 the rest (winner)
    excluded      text,                            -- ExcludedCount.reason; NULL: mailed
    due_at        timestamptz,                     -- deferred (frequency cap, local time)
    requested_at  timestamptz,                     -- handed to delivery.requests.v1
    PRIMARY KEY (workspace_id, campaign_id, contact_id)
);
CREATE UNIQUE INDEX recipients_by_message ON recipients (message_id);
-- The frequency cap: a contact's recent targeted messages across campaigns.
CREATE INDEX recipients_by_contact ON recipients (workspace_id, contact_id, requested_at)
    WHERE excluded IS NULL AND requested_at IS NOT NULL;
