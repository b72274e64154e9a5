-- API keys get a name, an end (a key replaced by rotation keeps working until expires_at),
-- the replacement that rotation made, and when they were last used (updated at most once a
-- minute per key, off the request path: services/contacts/keys.py LastUsedRecorder).
ALTER TABLE api_keys ADD COLUMN name text NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN replaced_by text REFERENCES api_keys (key_id);
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

-- The first key of every workspace so far was made with the workspace.
UPDATE api_keys SET name = 'default' WHERE name = '';

-- Listing a workspace's keys, newest first.
CREATE INDEX api_keys_workspace ON api_keys (workspace_id, created_at DESC, key_id);
