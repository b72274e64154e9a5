-- delivery: DKIM keys, one per sending domain of a workspace (issue 14, docs/delivery-auth.md).
-- The private key is kept as PKCS#8 PEM: the send path needs it in clear, and whoever holds
-- this database could send as the workspace anyway. It is never answered by an RPC nor logged.

CREATE TABLE dkim_keys (
    workspace_id     uuid        NOT NULL,
    domain           text        NOT NULL,
    selector         text        NOT NULL,
    algorithm        text        NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    private_key_pem  text        NOT NULL,
    dns_record_value text        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, domain)
);
