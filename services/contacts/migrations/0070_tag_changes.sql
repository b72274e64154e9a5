-- Tag changes applied with an idempotency key (ModifyTagsRequest.idempotency_key): the same
-- key again answers ``version`` and applies nothing. Without it, a caller retrying a call it
-- lost track of (the trigger engine's command relay, killed between contacts' answer and
-- its own bookkeeping) re-applied its change on top of a manager's later one. Pruned after
-- 30 days (services.common.idempotency), removed with their contact.
CREATE TABLE tag_changes (
    workspace_id     uuid        NOT NULL,
    idempotency_key  text        NOT NULL,
    contact_id       uuid        NOT NULL,
    add_tags         text[]      NOT NULL,
    remove_tags      text[]      NOT NULL,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, idempotency_key),
    FOREIGN KEY (workspace_id, contact_id) REFERENCES contacts (workspace_id, id) ON DELETE CASCADE
);
CREATE INDEX tag_changes_created ON tag_changes (created_at);
