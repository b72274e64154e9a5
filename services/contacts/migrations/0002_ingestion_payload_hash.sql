-- A reused idempotency key is a no-op only when it names the same event: the claim keeps a
-- hash of what was sent (the contact it resolved to and the event as given), so a key sent
-- again with another event is answered as a conflict instead of silently as the first one.
-- Claims made before this column existed have no hash; they are compared by contact only.
ALTER TABLE ingested_events ADD COLUMN payload_hash bytea;
