"""Path parameters several routers share."""

from typing import Annotated

from fastapi import Path

# No whitespace: a blank id names nobody, and contacts refuses it (422), so the document says
# so (a form feed passed the old schema and came back 422, which the schema did not promise).
ContactId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^\S+$", description="The contact's id.")
]
