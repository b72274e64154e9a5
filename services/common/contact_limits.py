"""The limits of a contact and of a shop event, shared by the contacts service (which
enforces them) and the gateway (which documents them in its OpenAPI schema and refuses a
body that breaks them before it makes a call). Here rather than in
``services/contacts/domain`` so that the gateway imports no other service's code."""

from __future__ import annotations

import re
from datetime import timedelta

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
TAG = re.compile(r"^[a-z0-9][a-z0-9_:-]{0,63}$")
LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
MAX_ATTRIBUTES = 50
MAX_TAGS = 100
MAX_TEXT = 200
MAX_ATTRIBUTE_VALUE = 1024
MAX_IDEMPOTENCY_KEY = 200
MAX_FUTURE_SKEW = timedelta(minutes=5)
# Any string in a shop event (ids, URLs, queries); the consumers index some of them.
MAX_EVENT_STRING = 2000
