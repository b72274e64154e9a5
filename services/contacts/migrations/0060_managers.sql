-- The people who use the web console (issue 18, services/contacts/managers.py). An e-mail
-- signs in to one workspace: it is unique across workspaces (case-insensitively), so the
-- login form needs no workspace field. Only the argon2id hash of the password is kept.
CREATE TABLE managers (
    id             uuid        PRIMARY KEY,
    workspace_id   uuid        NOT NULL REFERENCES workspaces (id),
    email          text        NOT NULL,
    password_hash  text        NOT NULL,
    role           smallint    NOT NULL CHECK (role IN (1, 2, 3)),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX managers_email ON managers (lower(email));
CREATE INDEX managers_workspace ON managers (workspace_id, lower(email));
