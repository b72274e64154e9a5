-- The run that sent each capped mail: the frequency cap counts the mails of OTHER runs, so a
-- sequence (the abandoned cart's reminder, then its offer the next day) is one conversation,
-- as a campaign is counted against other campaigns only. Rows from before have none: they
-- count against every run.
ALTER TABLE contact_sends ADD COLUMN run_id uuid;
