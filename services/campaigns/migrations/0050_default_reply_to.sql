-- campaigns, issue 18 (Settings): the workspace's default Reply-To, used by a campaign that
-- names none of its own ('' = none, as a campaign's reply_to). Kept with the other per-workspace
-- campaign settings; checked as an e-mail address by the service, like a campaign's.
ALTER TABLE settings ADD COLUMN default_reply_to text NOT NULL DEFAULT '';
