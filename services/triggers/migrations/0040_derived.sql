-- Derived triggers (services/triggers/derived.py, docs/triggers.md "Dates, silence and
-- value"). value_crossed needs each contact's total spent BEFORE the order that may cross a
-- threshold; contact_facts holds only the total after it. This is the total as the derived
-- hook last saw it: read (the "before") and replaced by the new total in the transaction of
-- every event of the contact while a value_crossed workflow is published in the workspace,
-- and seeded from contact_facts for every known contact when one is published
-- (schedule_workflow), so that totals reached before the publication are no crossing.
-- A contact without a row here appeared after that: its "before" is 0.
CREATE TABLE contact_value_seen (
    workspace_id       uuid        NOT NULL,
    contact_id         uuid        NOT NULL,
    total_spent_minor  bigint      NOT NULL,
    currency           text        NOT NULL,
    seen_at            timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, contact_id)
);
