-- A date workflow's timers for the contacts known at its publication (or its resumption),
-- written in batches after the publication commits, by the worker's schedule loop
-- (services/triggers/runtime/schedules.py), not inside the publication's transaction: at
-- 100,000 contacts that took 8 s, near the gateway's 10 s deadline. One job per workflow; a
-- later publication or resumption restarts it. ``after_contact`` is the keyset cursor: the
-- contacts up to it (in uuid order) have their timer.
CREATE TABLE schedule_jobs (
    workspace_id   uuid        NOT NULL,
    workflow_id    uuid        NOT NULL,
    version        integer     NOT NULL,
    after_contact  uuid,
    written        bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, workflow_id)
);
