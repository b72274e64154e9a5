-- Issue 11: a record the broker refuses for good must not block its schema's outbox, a
-- transaction notifies the relay once, and the idempotency claims can be pruned.

-- Rows the broker refused for good (e.g. larger than the producer's maximum request size):
-- moved here with the error so that the rows after them go out; an operator may fix and
-- re-insert them into the outbox.
CREATE TABLE outbox_dead_letters (
    id               bigint      PRIMARY KEY,  -- the row's outbox id
    topic            text        NOT NULL,
    key              bytea,
    value            bytea       NOT NULL,
    headers          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    error            text        NOT NULL
);

-- One NOTIFY per transaction that queues events, sent by the database at commit: the insert
-- needs no second round trip, and a transaction of 600 events wakes the relay once. The
-- transaction-local setting remembers that this transaction already notified (it rolls back
-- with a savepoint, like the notification itself).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('nudge.outbox_notified', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
        PERFORM set_config('nudge.outbox_notified', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Pruning deletes claims older than the horizon (services.common.idempotency): rows arrive in
-- time order, so a BRIN index finds the old ones for almost no write cost.
CREATE INDEX processed_events_processed_at ON processed_events USING brin (processed_at);
