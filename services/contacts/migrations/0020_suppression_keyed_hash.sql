-- The suppression list keyed by a keyed hash of the normalised address (issue 12).
--
-- Each workspace gets its own random HMAC key, made here by PostgreSQL's strong random source
-- (two gen_random_uuid(): 244 random bits) and never shown: the keyed hash of an erased
-- contact's address is therefore useless without the key, cannot be compared across
-- workspaces, and needs no secret to be deployed. Its limit: whoever reads this database reads
-- the keys too, and can test guessed addresses against the hashes of that workspace.
ALTER TABLE workspaces ADD COLUMN suppression_key bytea NOT NULL
    DEFAULT (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

-- HMAC-SHA256 (RFC 2104) in plain SQL with the built-in sha256(), so that one definition serves
-- one address (suppress, CheckEligibility) and 100k contacts in one statement (CountEligible).
-- The key is padded to SHA-256's 64-byte block and XORed with the pad byte.
CREATE FUNCTION hmac_pad(key bytea, pad integer) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(
        set_byte('\x00'::bytea, 0, (CASE WHEN i < length(key) THEN get_byte(key, i) ELSE 0 END) # pad),
        ''::bytea ORDER BY i)
    FROM generate_series(0, 63) AS i
$$;

-- The normalised address: trimmed and lower-cased, as contacts compares e-mails (lower(email)).
CREATE FUNCTION normalised_address(address text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT lower(btrim(address)) $$;

-- With the pads computed once (hmac_pad), the hash of a row is two sha256() calls.
CREATE FUNCTION address_hash_padded(ipad bytea, opad bytea, address text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT sha256(opad || sha256(ipad || convert_to(normalised_address(address), 'UTF8')))
$$;

CREATE FUNCTION address_hash(key bytea, address text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT address_hash_padded(hmac_pad(key, 54), hmac_pad(key, 92), address)
$$;

-- The list before issue 12 was keyed by the address in clear; its rows (nothing wrote any) are
-- carried over, hashed with their workspace's new key.
ALTER TABLE suppressions RENAME TO suppressions_before_0020;
CREATE TABLE suppressions (
    workspace_id  uuid        NOT NULL REFERENCES workspaces (id),
    address_hash  bytea       NOT NULL,  -- address_hash(workspace's key, address)
    address       text,                  -- normalised; NULL when erased (the hash alone stays)
    reason        smallint    NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, address_hash),
    CHECK (address IS NULL OR address = normalised_address(address))
);
-- ListSuppressions pages newest first.
CREATE INDEX suppressions_by_time ON suppressions (workspace_id, created_at DESC, address_hash);

INSERT INTO suppressions (workspace_id, address_hash, address, reason, created_at)
SELECT s.workspace_id, address_hash(w.suppression_key, s.email), normalised_address(s.email),
       s.reason, s.created_at
FROM suppressions_before_0020 s JOIN workspaces w ON w.id = s.workspace_id
ON CONFLICT DO NOTHING;
DROP TABLE suppressions_before_0020;
