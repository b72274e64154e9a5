-- campaigns, issue 15 (fan-out speed): the report finds a message's row by its contact, not
-- by a unique index on the message id alone.
--
-- recipients_by_message (message_id) took a B-tree entry at a random place for every row the
-- fan-out writes (uuid5 ids), ~5 µs of PostgreSQL's CPU a recipient of the ~45 a fan-out
-- costs in all (bench/RESULTS.md). Every delivery and tracking event names its contact as
-- well as its message, so the report's lookup goes through the contact's mailed rows (a few
-- a month under the frequency cap), with the message id checked inside the index. The index
-- is partial on excluded IS NULL only: a deferred row (requested_at still NULL) is mailed by
-- the driver before its requested_at is written, so its first delivery events may come
-- first and must find it. The message id stays unique by construction: uuid5 of (campaign,
-- contact), and (workspace, campaign, contact) is the primary key.
DROP INDEX recipients_by_message;
DROP INDEX recipients_by_contact;
CREATE INDEX recipients_by_contact ON recipients (workspace_id, contact_id, requested_at, message_id)
    WHERE excluded IS NULL;
