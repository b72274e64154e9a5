"""The campaigns service: targeted messages a manager writes for segments of their contacts.

The walking skeleton stores drafts and reads them back (``CreateCampaign``, ``GetCampaign``,
``ListCampaigns``). Sending (audience from segmentation, eligibility, ``sends`` and
``delivery.requests.v1`` through the outbox), scheduling and per-campaign stats are later
issues; they add tables and a relay to this service without changing what is here.
"""
