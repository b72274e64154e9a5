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

# Issue 15: the rest of a campaign.
MAX_BODY_HTML = 50_000  # the gateway takes bodies up to 64 KiB
MAX_BODY_MARKDOWN = 10_000
MAX_EXCLUDE_SEGMENTS = 20
MAX_TAGS_ANY = 20
MAX_REPLY_TO = 254
MAX_TIME_ZONE = 64
MAX_NOTE = 500
MIN_AB_SUBJECTS = 2
MAX_AB_SUBJECTS = 5
MIN_AB_SAMPLE_PERCENT = 2
MAX_AB_SAMPLE_PERCENT = 50
MIN_AB_DECIDE_AFTER_S = 10 * 60
MAX_AB_DECIDE_AFTER_S = 7 * 24 * 3600
MAX_HOLDOUT_PERCENT = 50
# Workspace campaign settings.
MIN_CAP_MESSAGES, MAX_CAP_MESSAGES = 1, 100
MIN_CAP_DAYS, MAX_CAP_DAYS = 1, 365
