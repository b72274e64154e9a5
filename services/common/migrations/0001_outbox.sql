-- Shared by every service, applied into each service's own schema.

-- Transactional outbox: a state change and the event announcing it commit together;
-- the relay publishes rows to Kafka in id order and deletes them once the broker acked.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    key         bytea,
    value       bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Idempotent consumers: one row per (consumer, event) handled, written in the same
-- transaction as the change the event caused, so a redelivered event changes nothing.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
