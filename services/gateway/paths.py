"""Path parameters several routers share."""

from typing import Annotated

from fastapi import Path

from services.gateway.schemas import WHITE_SPACE

# No white space or NUL: a blank id names nobody, and contacts refuses it (422), so the document
# says so (a form feed passed the old schema and came back 422, which the schema did not promise).
# The characters are spelled out rather than ``\S``: Python's ``\S`` also refuses U+0085 and
# U+001C-U+001F, which ECMA's (the one schema clients use) accepts, so a client reading the
# document sent an id the gateway refused.
CONTACT_ID_PATTERN = f"^[^\\x00{WHITE_SPACE}]+$"
ContactId = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=CONTACT_ID_PATTERN, description="The contact's id."),
]
