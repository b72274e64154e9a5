-- Issue 18, the console's Overview: "how did each segment change over the last 30 days?"
-- Segments are evaluated from the profiles as they are now (an as_of in the past sees past
-- orders and signups, but current tags, consent and VIP flags), so a past count cannot be
-- recomputed: it has to be kept. Each count of a stored segment at "now" replaces that
-- day's (UTC) row (queries.count_with_history): a day keeps its last count, the nearest to
-- its end that anyone asked for.
-- One row per segment and day: ~365 rows a segment a year.
CREATE TABLE segment_count_snapshots (
    workspace_id  uuid    NOT NULL,
    segment_id    text    NOT NULL,
    day           date    NOT NULL,
    count         bigint  NOT NULL CHECK (count >= 0),
    PRIMARY KEY (workspace_id, segment_id, day)
);
