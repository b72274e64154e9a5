-- The anti-spam guard (issue 14, seed 001; services/delivery/guard.py, docs/anti-spam-guard.md).

-- What each workspace sent, had hard-bounced and had complained about, per hour. A lift
-- starts a new generation of the workspace: the rates count only the current one, so the
-- figures that caused a suspension do not cause the next one.
CREATE TABLE guard_counts (
    workspace_id  uuid        NOT NULL,
    hour          timestamptz NOT NULL,
    generation    integer     NOT NULL,
    sent          bigint      NOT NULL DEFAULT 0,
    hard_bounces  bigint      NOT NULL DEFAULT 0,
    complaints    bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, hour, generation)
);

-- A workspace's generation (the number of lifts); no row: generation 0.
CREATE TABLE guard_workspaces (
    workspace_id  uuid    PRIMARY KEY,
    generation    integer NOT NULL DEFAULT 0
);

-- Every suspension, with the rule, the words a manager reads, the figures at the time, and
-- its lift (when, the operator's note). At most one is active (not lifted) per workspace.
CREATE TABLE guard_suspensions (
    id            bigserial   PRIMARY KEY,
    workspace_id  uuid        NOT NULL,
    rule          text        NOT NULL,
    reason        text        NOT NULL,
    figures       jsonb       NOT NULL,
    suspended_at  timestamptz NOT NULL,
    lifted_at     timestamptz,
    lift_note     text
);
CREATE UNIQUE INDEX guard_suspensions_active ON guard_suspensions (workspace_id)
    WHERE lifted_at IS NULL;
CREATE INDEX guard_suspensions_history ON guard_suspensions (workspace_id, suspended_at);
