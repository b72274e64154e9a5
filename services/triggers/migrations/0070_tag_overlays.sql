-- The engine's own tag changes, kept on top of what contacts last said until contacts' event
-- says it too (services/triggers/runtime/facts.py, "Tag overlays").
--
-- A Tag step writes its change through to ``contact_facts.tags`` at once (the contact's
-- next order must see it, seed 002) and leaves a ``commands`` row for the relay. Before,
-- contacts' next TagsChanged replaced the tags whole: an event of a state before the
-- engine's later changes (order 1's tag arriving after order 2 was handled) wiped them, and
-- order 3 was taken for a second purchase. Now the facts keep contacts' tags apart
-- (``base_tags``, as of ``version``), and a tags command stays as an overlay until an
-- event at least as new as the version contacts answered it with (``settled_version``) has
-- been applied: ``tags`` is always ``base_tags`` with the live overlays applied in order.
ALTER TABLE contact_facts ADD COLUMN base_tags text[] NOT NULL DEFAULT '{}';
UPDATE contact_facts SET base_tags = tags;

-- NULL while the relay has not carried the command out; then the contact's version in
-- contacts' answer. A settled row is never leased again (next_try_at = 'infinity').
ALTER TABLE commands ADD COLUMN settled_version bigint;

-- A contact's commands in the order they were written: the relay's "no earlier row still
-- waiting" and the overlays read by every contacts event.
CREATE INDEX commands_by_contact ON commands (workspace_id, contact_id, created_at, id);
