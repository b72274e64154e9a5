"""The segmentation service: a read model of every contact, and the segments over it.

What it does now (the walking skeleton):
- keeps ``profiles`` and ``orders`` in its own schema from ``contacts.events.v1`` and
  ``shop.events.v1`` (consumer group ``segmentation``, idempotent on ``event_id``);
- serves ``SegmentService.ListSegments`` (the built-in segments of domain.md) and
  ``CountSegment`` (an exact count at any evaluation time).

What it does not do yet, by design: publishing ``segments.membership.v1``
(``SegmentMembershipChanged`` entered/exited) belongs to the segmentation-engine issue. That
issue evaluates memberships incrementally at scale (a million contacts), keeps the current
members per segment in this schema, and queues the changes through this schema's outbox in
the same transaction as the membership rows. Until then nothing is published on that topic.
"""
