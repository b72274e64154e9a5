-- Every committed change of a contact increments its version, and the one event the change
-- publishes carries it (services/contacts/changes.py), so read models apply events in order.
ALTER TABLE contacts ADD COLUMN version bigint NOT NULL DEFAULT 1;
