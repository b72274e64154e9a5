-- campaigns, issue 15, the report: what delivery and tracking said about each message of a
-- campaign (on its `recipients` row), and the orders attributed to campaigns.
--
-- Every outcome is a timestamp set once (LEAST: the first time wins) and every total is
-- a counter raised only under a new processed_events claim in the same statement, so that
-- applying the same event twice, or events in any order, gives the same row.
ALTER TABLE recipients
    ADD COLUMN queued_at              timestamptz,  -- MessageQueued
    ADD COLUMN delivered_at           timestamptz,  -- MessageSent: accepted by the SMTP server
    ADD COLUMN deferred_at            timestamptz,  -- the latest MessageDeferred
    ADD COLUMN deferrals              integer NOT NULL DEFAULT 0,
    ADD COLUMN bounced_at             timestamptz,  -- MessageBounced (also a DSN after delivery)
    ADD COLUMN failed_at              timestamptz,
    ADD COLUMN unknown_at             timestamptz,
    ADD COLUMN skipped_at             timestamptz,
    ADD COLUMN complained_at          timestamptz,
    ADD COLUMN unsubscribed_at        timestamptz,
    ADD COLUMN first_human_open_at    timestamptz,
    ADD COLUMN first_machine_open_at  timestamptz,
    ADD COLUMN human_opens            integer NOT NULL DEFAULT 0,
    ADD COLUMN machine_opens          integer NOT NULL DEFAULT 0,
    ADD COLUMN first_human_click_at   timestamptz,
    ADD COLUMN first_machine_click_at timestamptz,
    ADD COLUMN human_clicks           integer NOT NULL DEFAULT 0,
    ADD COLUMN machine_clicks         integer NOT NULL DEFAULT 0,
    -- The latest human open or click: an order within 5 days after it is attributed.
    ADD COLUMN last_human_engaged_at  timestamptz;

-- An order's hold-out lookup (mailed rows use recipients_by_contact).
CREATE INDEX recipients_holdout_by_contact ON recipients (workspace_id, contact_id)
    WHERE excluded = 'holdout';

-- One row per order attributed to a campaign (to its mail, or to its hold-out). Keyed by the
-- order: a replayed OrderPlaced inserts nothing, and an order counts for one campaign only.
CREATE TABLE attributions (
    workspace_id  uuid        NOT NULL,
    order_id      text        NOT NULL,
    campaign_id   uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    variant       smallint    NOT NULL,  -- the recipient's variant; its row's for the hold-out
    holdout       boolean     NOT NULL,
    amount_minor  bigint      NOT NULL,
    currency      text        NOT NULL,
    placed_at     timestamptz NOT NULL,
    voided_at     timestamptz,           -- OrderCancelled / OrderRefunded: no longer counted
    PRIMARY KEY (workspace_id, order_id)
);
CREATE INDEX attributions_by_campaign ON attributions (workspace_id, campaign_id, contact_id);
CREATE INDEX attributions_by_contact ON attributions (workspace_id, contact_id, placed_at);
