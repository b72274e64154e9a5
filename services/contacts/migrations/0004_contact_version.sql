-- Every committed change of a contact increments its version, and the one event the change
-- publishes carries it (services/contacts/changes.py), so read models apply events in order.
ALTER TABLE contacts ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- Double opt-in (issue 12): a grant counts from the click on the confirmation mail's link.
ALTER TABLE workspaces ADD COLUMN double_opt_in boolean NOT NULL DEFAULT false;
