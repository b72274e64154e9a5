-- The entry key a run was started for (the cart id), apart from run_key, which is the
-- uniqueness slot of the entry rules: '' for "single" (one live run per contact), the key
-- for "per_key", the run id for "unlimited" (no limit). Exit rules and "happened"
-- conditions with same_key compare events with entry_key.
ALTER TABLE runs ADD COLUMN entry_key text NOT NULL DEFAULT '';
