"""The campaigns service: targeted messages a manager writes for segments of their contacts.

Drafts and their lifecycle (lifecycle.py, scheduler.py), the audience as a stream
(audience.py), content and its checks (domain/content.py, domain/checks.py), the fan-out
to ``delivery.requests.v1`` (fanout.py) and the report from delivery, tracking and shop
events (report.py, stats.py, ab.py). docs/campaigns.md tells each part.
"""
