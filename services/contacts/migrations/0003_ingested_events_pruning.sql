-- Idempotency claims of shop events are pruned past the horizon (services.common.idempotency);
-- they are written in time order, so a BRIN index finds the old ones cheaply.
CREATE INDEX ingested_events_created_at ON ingested_events USING brin (created_at);
