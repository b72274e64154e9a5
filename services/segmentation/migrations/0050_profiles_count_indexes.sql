-- Issue 13, speed (bench/segments.py, bench/RESULTS.md): what a segment count over a
-- million profiles reads.

-- The columns the built-in rules read, in an index a tenth the size of the table (88 MB
-- against 426 MB at 1M contacts): a count whose rule reads only these is a parallel
-- index-only scan, all of it in shared buffers, instead of a scan of the whole heap.
-- contact_id is there for the subqueries that recompute aggregates at a past as_of.
CREATE INDEX profiles_aggregates ON profiles (workspace_id)
    INCLUDE (contact_id, orders_count, first_order_at, last_order_at, signed_up_at, vip);

-- "Does any profile of the workspace have an order after as_of?": one index probe that lets
-- a count at now read the aggregate columns alone (no correlated subquery, which keeps
-- PostgreSQL 16 from planning the scan in parallel).
CREATE INDEX profiles_last_order ON profiles (workspace_id, last_order_at);
