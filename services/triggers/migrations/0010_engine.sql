-- triggers: the workflow engine (docs/triggers.md). Every exact fact lives here (DESIGN.md):
-- workflows and their published versions, runs, steps taken, pending timers, what the
-- engine knows of each contact, and the command outbox towards contacts. Every table with a
-- contact_id is exported and emptied on erasure (services/triggers/privacy.py).

-- The skeleton's one-row-per-start table: replaced by `runs`.
DROP TABLE workflow_runs;

-- What a manager edits: the draft, and which version is live.
CREATE TABLE workflows (
    workspace_id       uuid        NOT NULL,
    id                 uuid        NOT NULL,
    name               text        NOT NULL,
    status             text        NOT NULL DEFAULT 'draft'
                       CHECK (status IN ('draft', 'active', 'paused')),
    draft              jsonb       NOT NULL,  -- the definition being edited (nudge.workflow/v1)
    draft_revision     integer     NOT NULL DEFAULT 1,
    published_version  integer     NOT NULL DEFAULT 0,  -- 0: never published
    trigger_event      text        NOT NULL,  -- of the published version (draft's until then)
    template_id        text        NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    published_at       timestamptz,
    PRIMARY KEY (workspace_id, id)
);
-- The engine asks "which live workflows does this event start?" per event.
CREATE INDEX workflows_live ON workflows (workspace_id, trigger_event) WHERE status = 'active';

-- Every published version, immutable: a run keeps the version it started with.
CREATE TABLE workflow_versions (
    workspace_id  uuid        NOT NULL,
    workflow_id   uuid        NOT NULL,
    version       integer     NOT NULL,
    definition    jsonb       NOT NULL,
    published_at  timestamptz NOT NULL,
    published_by  text        NOT NULL DEFAULT '',
    PRIMARY KEY (workspace_id, workflow_id, version)
);

-- One row per run. Its id is deterministic (uuid5 of workspace, workflow and the event that
-- started it), so a replayed trigger finds the run it already started.
CREATE TABLE runs (
    workspace_id      uuid        NOT NULL,
    id                uuid        NOT NULL,
    workflow_id       uuid        NOT NULL,
    version           integer     NOT NULL,
    contact_id        uuid        NOT NULL,
    run_key           text        NOT NULL DEFAULT '',  -- the entry key (cart id), '' if none
    state             text        NOT NULL
                      CHECK (state IN ('active', 'waiting', 'completed', 'exited', 'cancelled')),
    position          text,  -- the id of the next step to run; NULL once ended
    vars              jsonb       NOT NULL DEFAULT '{}',  -- what the trigger carried (cart...)
    executed          jsonb       NOT NULL DEFAULT '{}',  -- step id -> times run in this run
    trigger_event_id  text        NOT NULL,
    started_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    next_wake_at      timestamptz,
    ended_at          timestamptz,
    end_reason        text        NOT NULL DEFAULT '',
    test_recipient    text        NOT NULL DEFAULT '',  -- a test run: every send goes here
    PRIMARY KEY (workspace_id, id)
);
-- Entry rules: at most one live run per (workflow, contact, key).
CREATE UNIQUE INDEX runs_one_live ON runs (workspace_id, workflow_id, contact_id, run_key)
    WHERE ended_at IS NULL AND test_recipient = '';
CREATE INDEX runs_live_by_contact ON runs (workspace_id, contact_id) WHERE ended_at IS NULL;
CREATE INDEX runs_by_workflow ON runs (workspace_id, workflow_id, started_at DESC, id);
CREATE INDEX runs_by_contact ON runs (workspace_id, contact_id, workflow_id);

-- The steps runs went through: per-step counts, "has this contact done this step before"
-- (Step.repeat), and a run's history. The key makes a replayed step a no-op.
CREATE TABLE run_steps (
    workspace_id  uuid        NOT NULL,
    run_id        uuid        NOT NULL,
    step_id       text        NOT NULL,
    iteration     integer     NOT NULL,
    workflow_id   uuid        NOT NULL,
    version       integer     NOT NULL,
    contact_id    uuid        NOT NULL,
    outcome       text        NOT NULL,  -- done, yes, no, skipped:<why>, waiting
    at            timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, run_id, step_id, iteration)
);
CREATE INDEX run_steps_by_workflow ON run_steps (workspace_id, workflow_id, version, step_id);
CREATE INDEX run_steps_by_contact ON run_steps (workspace_id, contact_id, workflow_id);

-- Pending timers, claimed with DELETE ... FOR UPDATE SKIP LOCKED by the timer loop of any
-- worker, in the transaction that writes their effects. timer_key says what it wakes:
-- "run/<run id>" (a wait or a send window), "date/<workflow>/<contact>" (the next birthday
-- or anniversary), "inactive/<workflow>/<contact>" (moved on by every activity).
CREATE TABLE timers (
    timer_key     text        PRIMARY KEY,
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    workflow_id   uuid        NOT NULL,
    run_id        uuid,
    kind          text        NOT NULL CHECK (kind IN ('run', 'date', 'inactive')),
    due_at        timestamptz NOT NULL,
    payload       jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX timers_due ON timers (due_at);
CREATE INDEX timers_by_contact ON timers (workspace_id, contact_id);

-- What the engine knows of each contact, from contacts.events.v1, segments.membership.v1 and
-- shop.events.v1, applied only when newer (version), and written through by the engine's own
-- tag and score actions so that the next event of the same contact sees them.
CREATE TABLE contact_facts (
    workspace_id       uuid        NOT NULL,
    contact_id         uuid        NOT NULL,
    version            bigint      NOT NULL DEFAULT 0,
    tags               text[]      NOT NULL DEFAULT '{}',
    attributes         jsonb       NOT NULL DEFAULT '{}',
    segments           text[]      NOT NULL DEFAULT '{}',
    time_zone          text        NOT NULL DEFAULT '',
    birthday           date,
    signed_up_at       timestamptz,
    total_spent_minor  bigint      NOT NULL DEFAULT 0,
    currency           text        NOT NULL DEFAULT '',
    last_activity_at   timestamptz,
    PRIMARY KEY (workspace_id, contact_id)
);

-- A contact's recent events, for exit rules and "happened since the run began" conditions.
-- Pruned past the longest time a run may look back (docs/triggers.md).
CREATE TABLE contact_events (
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    event_id      text        NOT NULL,
    event         text        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    event_key     text        NOT NULL DEFAULT '',  -- cart or order id
    data          jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (workspace_id, contact_id, event_id)
);
CREATE INDEX contact_events_recent ON contact_events (workspace_id, contact_id, occurred_at);

-- Marketing mail the engine sent, for the workspace's frequency cap.
CREATE TABLE contact_sends (
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    message_id    text        NOT NULL,
    sent_at       timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, contact_id, message_id)
);

-- Tag and score changes for contacts' gRPC API, written in the step's transaction and
-- carried out by the command relay with the command id as idempotency key.
CREATE TABLE commands (
    id            text        PRIMARY KEY,  -- deterministic: run id + step + iteration
    workspace_id  uuid        NOT NULL,
    contact_id    uuid        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('tags', 'score')),
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    next_try_at   timestamptz NOT NULL,
    last_error    text        NOT NULL DEFAULT ''
);
CREATE INDEX commands_due ON commands (next_try_at);
