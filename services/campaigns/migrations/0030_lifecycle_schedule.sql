-- campaigns, issue 15 (lifecycle): when the scheduler moves a scheduled campaign to sending.
-- Equal to scheduled_at, except for a local-time campaign: the instant its wall-clock time
-- comes first anywhere (UTC+14), so that the fan-out can hold each contact until its own.
ALTER TABLE campaigns ADD COLUMN starts_at timestamptz;
CREATE INDEX campaigns_due ON campaigns (starts_at) WHERE status = 2;
