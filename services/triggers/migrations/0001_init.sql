-- triggers: workflow runs. Durable and exact state lives here, not in Faust tables
-- (DESIGN.md: a Faust table may only hold what can be rebuilt).

-- One row per started run; run_key says how often a workflow may run for a contact
-- ("welcome/<contact>" runs once ever), so a replayed event starts nothing twice.
CREATE TABLE workflow_runs (
    workspace_id    uuid        NOT NULL,
    run_key         text        NOT NULL,
    workflow_id     text        NOT NULL,
    contact_id      uuid        NOT NULL,
    cause_event_id  text        NOT NULL,
    started_at      timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, run_key)
);
