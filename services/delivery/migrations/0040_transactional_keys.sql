-- One row per idempotency key of SendTransactional: a retried call answers the first call's
-- message id (replayed = true) and queues nothing; the same key with another request is
-- refused. request_sha256 is the SHA-256 of the request as sent (deterministic protobuf).
CREATE TABLE transactional_keys (
    workspace_id    uuid        NOT NULL,
    idempotency_key text        NOT NULL,
    message_id      uuid        NOT NULL,
    contact_id      uuid        NOT NULL,
    request_sha256  bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, idempotency_key)
);
CREATE INDEX transactional_keys_contact ON transactional_keys (workspace_id, contact_id);
