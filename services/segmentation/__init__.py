"""The segmentation service: a read model of every contact, and the segments over it.

What it does now:
- keeps ``profiles`` and ``orders`` in its own schema from ``contacts.events.v1`` and
  ``shop.events.v1`` (consumer group ``segmentation``). Every contact event is applied by the
  contact's ``version`` (an event at or below the stored one changes nothing); shop events
  once per ``event_id``. Deleted and erased contacts are removed and leave a tombstone
  without personal data. Records are applied in set-based batches
  (``handlers.ReadModelWriter``). docs/segmentation-read-model.md has the details;
- serves ``SegmentService.ListSegments`` (the built-in segments of domain.md) and
  ``CountSegment``: an exact count (a query over every contact, not an estimate) of the
  contacts the rule picks. Membership is evaluated when asked, never stored, so a change
  of VIP star, orders or signup counts as soon as its event is applied;
- serves ``nudge.privacy.v1.ContactDataService.ExportContactData`` to Nudge's own services
  (internal token): the profile, orders and current memberships of one contact.

What ``CountSegment``'s ``as_of`` means: the rules are evaluated with ``as_of`` as their
``now`` (the time their windows, "last 3 months", "90 days ago", are measured from), over the
read model as it is when the call runs, minus what happened after ``as_of`` as the shop dated
it: completed orders count only if placed at or before ``as_of``, and a signup only if not
after it. It is not a snapshot of the past. Every contact the read model holds now is
considered, including those it learnt of after ``as_of``; the VIP star is today's (no history
of it is kept); an order cancelled or refunded since ``as_of`` counts as never completed; and
events still on their way through Kafka are not counted yet.

What it does not do yet, by design: publishing ``segments.membership.v1``
(``SegmentMembershipChanged`` entered/exited) belongs to the segmentation-engine issue. That
issue evaluates memberships incrementally at scale (a million contacts), keeps the current
members per segment in this schema, and queues the changes through this schema's outbox in
the same transaction as the membership rows. Until then nothing is published on that topic.
"""
