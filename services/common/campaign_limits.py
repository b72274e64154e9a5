"""The limits of a campaign draft and of a campaign list page, shared by the campaigns
service (which enforces them) and the gateway (which refuses an oversized body before it
makes a call, and documents the limits in its OpenAPI schema). Here rather than in
``services/campaigns/domain`` so that the gateway imports no other service's code."""

MAX_NAME = 200
MAX_SUBJECT = 200
MAX_BODY_TEXT = 10_000
MAX_SEGMENTS = 20

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# A page token longer than this is not one campaigns made.
MAX_PAGE_TOKEN = 200
