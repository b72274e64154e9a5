-- Bulk imports (issue 12): one row per import, named by the caller's import key, with its
-- progress. Each batch of the file commits with the line it reached, so sending the same
-- key again skips every row already applied (no duplicate contacts, no second event).
CREATE TABLE imports (
    workspace_id    uuid        NOT NULL REFERENCES workspaces (id),
    id              uuid        NOT NULL,
    import_key      text        NOT NULL,
    options_hash    bytea       NOT NULL,  -- a repeat must send the same options
    file_name       text        NOT NULL DEFAULT '',
    state           smallint    NOT NULL,  -- ImportState
    committed_line  bigint      NOT NULL DEFAULT 0,  -- rows starting at or before: applied
    rows            bigint      NOT NULL DEFAULT 0,
    created         bigint      NOT NULL DEFAULT 0,
    updated         bigint      NOT NULL DEFAULT 0,
    unchanged       bigint      NOT NULL DEFAULT 0,
    rejected        bigint      NOT NULL DEFAULT 0,
    errors_stored   bigint      NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    PRIMARY KEY (workspace_id, id),
    UNIQUE (workspace_id, import_key)
);

-- The rejected rows of an import (the first 100,000), downloadable as CSV.
CREATE TABLE import_errors (
    workspace_id  uuid   NOT NULL,
    import_id     uuid   NOT NULL,
    line          bigint NOT NULL,
    seq           int    NOT NULL,  -- several reasons for one line
    field         text   NOT NULL,
    reason        text   NOT NULL,
    PRIMARY KEY (workspace_id, import_id, line, seq),
    FOREIGN KEY (workspace_id, import_id) REFERENCES imports (workspace_id, id)
);
