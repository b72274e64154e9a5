"""The limits of a contact and of a shop event, shared by the contacts service (which
enforces them) and the gateway (which documents them in its OpenAPI schema and refuses a
body that breaks them before it makes a call). Here rather than in
``services/contacts/domain`` so that the gateway imports no other service's code."""

from __future__ import annotations

import re
from datetime import timedelta

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL = 254
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


def check_email(address: str) -> tuple[str, str]:
    """``(normalised address, "")`` for a valid e-mail address, ``("", reason)`` otherwise.

    The syntax is the maintained ``email-validator``'s (RFC 5322/6531 with the practical
    restrictions mail servers apply), not a pattern of ours, and its refusals say what is
    wrong ("An email address must have an @-sign."). No DNS is asked (check_deliverability
    off): a shop's import must not hang on a slow resolver. The domain comes back lower-case
    and Unicode-normalised; the local part keeps its case (uniqueness in a workspace is
    case-insensitive all the same: the contacts table's index is on ``lower(email)``)."""
    if len(address) > MAX_EMAIL:
        return "", f"longer than {MAX_EMAIL} characters"
    try:
        return validate_email(address, check_deliverability=False).normalized, ""
    except EmailNotValidError as err:
        return "", str(err)
