-- Issue 13: the profile a rule reads, custom segments, and the memberships that
-- segments.membership.v1 reports transitions of.

-- Order aggregates kept on the profile, so that a count over a million contacts reads one
-- row per contact instead of ten million orders. They count every completed order; a query
-- at an evaluation time before the last order (as_of < last_order_at) recomputes that
-- contact's aggregates from `orders` (docs/segment-rules.md, "Evaluation time").
ALTER TABLE profiles
    ADD COLUMN first_name      text,
    ADD COLUMN last_name       text,
    ADD COLUMN orders_count    integer     NOT NULL DEFAULT 0,
    ADD COLUMN first_order_at  timestamptz,
    ADD COLUMN last_order_at   timestamptz,
    -- Completed orders per currency as reported: {"EUR": {"total_minor": 12345, "orders": 3}}.
    ADD COLUMN spent           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN last_visit_at   timestamptz,  -- the newest shop event of any kind
    ADD COLUMN last_open_at    timestamptz,  -- tracking: human opens only (no machine opens)
    ADD COLUMN last_click_at   timestamptz,
    -- The current cart: {"cart_id", "total_minor", "currency", "items", "updated_at"}; NULL
    -- when none or once an order placed it.
    ADD COLUMN cart            jsonb,
    -- The earliest moment at which time alone may move the contact into or out of a segment
    -- (a window closing, a last order growing old); the sweeper re-evaluates it then.
    ADD COLUMN next_transition_at timestamptz;

CREATE INDEX profiles_due ON profiles (next_transition_at) WHERE next_transition_at IS NOT NULL;

-- Behaviour counted over a window by rules ("viewed category shoes in the last 30 days",
-- "searched", "opened", "clicked"): one row per event, kept by event time.
CREATE TABLE activity (
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    kind          text        NOT NULL
                  CHECK (kind IN ('page_viewed', 'searched', 'message_opened', 'link_clicked')),
    subject       text        NOT NULL DEFAULT '',  -- category, search query (lower case), url
    at            timestamptz NOT NULL,
    event_id      text        NOT NULL,
    PRIMARY KEY (workspace_id, contact_id, kind, at, event_id)
);

-- Custom segments (built-ins are code: services/segmentation/domain/builtins.py).
CREATE TABLE segments (
    workspace_id  uuid        NOT NULL,
    id            text        NOT NULL,
    name          text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    rule          jsonb       NOT NULL,
    depends_on    text[]      NOT NULL DEFAULT '{}',  -- segment ids the rule references
    version       bigint      NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE UNIQUE INDEX segments_name ON segments (workspace_id, lower(name));

-- Who is in which segment (built-in or custom), as last evaluated; the difference between
-- this and a new evaluation is what segments.membership.v1 publishes.
CREATE TABLE memberships (
    workspace_id  uuid        NOT NULL,
    segment_id    text        NOT NULL,
    contact_id    uuid        NOT NULL,
    since         timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, segment_id, contact_id)
);
CREATE INDEX memberships_by_contact ON memberships (workspace_id, contact_id);
