-- delivery, issue 17: the story of a mail (services/delivery/story.py, `nudge message ID`).
--
-- The ledger row kept only the latest status; the story needs where the request came from,
-- the trace it was claimed in, and every status the message went through, with times.

-- Written at the first claim, from the request and the consumer's span: the trace id of the span
-- current when delivery claimed the message (the per-record span, which continues the
-- producer's trace), the consent purpose contacts was asked about, and for automation mail
-- the workflow run and step that asked for it.
ALTER TABLE messages
    ADD COLUMN trace_id        text        NOT NULL DEFAULT '',
    ADD COLUMN purpose         smallint    NOT NULL DEFAULT 0,
    ADD COLUMN run_id          text        NOT NULL DEFAULT '',
    ADD COLUMN step_id         text        NOT NULL DEFAULT '',
    -- When the request was made (its envelope's occurred_at): the wait before the claim.
    ADD COLUMN requested_at    timestamptz,
    -- The next attempt planned by the latest DEFERRED outcome (copied into the history).
    ADD COLUMN next_attempt_at timestamptz;

-- One row per status a message took (claimed, deferred, claimed again, sent...), written by
-- the triggers below in the statement that changes the ledger: the group writes
-- (services/delivery/writes.py) and every other path record their history without a round
-- trip of their own, and no path can forget to.
CREATE TABLE message_history (
    message_id       uuid        NOT NULL,
    seq              bigserial,
    at               timestamptz NOT NULL,
    status           smallint    NOT NULL,
    detail           text        NOT NULL,
    attempt          integer     NOT NULL,
    next_attempt_at  timestamptz,
    PRIMARY KEY (message_id, seq)
);

-- Statement-level, with transition tables: a group of 500 claims costs one INSERT ... SELECT,
-- not 500 trigger calls.
CREATE FUNCTION message_history_inserted() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO message_history (message_id, at, status, detail, attempt, next_attempt_at)
    SELECT n.message_id, n.updated_at, n.status, n.detail, n.attempts,
           CASE WHEN n.status = 6 THEN n.next_attempt_at END
    FROM new_rows n;
    RETURN NULL;
END $$;

-- Only a change of status or of attempt is a stage: an erasure (which rewrites the contact
-- and the detail) is not. The transition tables have no statistics: without a hint the
-- planner joins them with a nested loop, which cost a group of 500 outcomes 35 ms.
CREATE FUNCTION message_history_updated() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_nestloop = off AS $$
BEGIN
    INSERT INTO message_history (message_id, at, status, detail, attempt, next_attempt_at)
    SELECT n.message_id, n.updated_at, n.status, n.detail, n.attempts,
           CASE WHEN n.status = 6 THEN n.next_attempt_at END
    FROM new_rows n JOIN old_rows o ON o.message_id = n.message_id
    WHERE o.status <> n.status OR o.attempts <> n.attempts;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_history_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION message_history_inserted();
CREATE TRIGGER messages_history_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION message_history_updated();
