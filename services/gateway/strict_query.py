"""Unknown query parameters are refused, as unknown body fields are.

FastAPI ignores a query parameter that no route declares, so a misspelt filter widened the
answer without a word: ``GET /v1/contacts?email=ada@example.com`` listed every contact of
the workspace (the filter is ``q``), and ``?pagesize=10`` paged by the default. The API's
bodies already refuse unknown fields (``extra="forbid"``); this dependency does the same for
the query string of every ``/v1`` route: a 422 problem naming each unknown parameter, with
the route's own parameters in the message so that the fix is in the answer.

Only ``/v1`` routes: the console's pages, ``/docs`` and ``/healthz`` take no parameters, and
a link that lands on them with a tracking parameter should not break.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

_NAMES = "_nudge_query_names"  # kept on the route (routes are not hashable)


def _declared(route: APIRoute) -> frozenset[str]:
    """The query parameters a route and its dependencies declare, by their public names (a
    parameter model's fields by theirs); worked out once per route."""
    known: frozenset[str] | None = getattr(route, _NAMES, None)
    if known is None:
        known = _walk(route)
        setattr(route, _NAMES, known)
    return known


def _walk(route: APIRoute) -> frozenset[str]:
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        for param in dependant.query_params:
            model = getattr(param.field_info, "annotation", None)
            if isinstance(model, type) and issubclass(model, BaseModel):
                names.update(f.alias or name for name, f in model.model_fields.items())
            else:
                names.add(param.alias)
        pending.extend(dependant.dependencies)
    return frozenset(names)


async def reject_unknown_query(request: Request) -> None:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.path.startswith("/v1/"):
        return
    known = _declared(route)
    unknown = sorted(set(request.query_params) - known)
    if not unknown:
        return
    expected = ", ".join(sorted(known)) or "none"
    raise RequestValidationError(
        [
            {
                "type": "extra_forbidden",
                "loc": ("query", name),
                "msg": f"unknown query parameter (this route takes: {expected})",
                "input": request.query_params.get(name),
            }
            for name in unknown
        ]
    )
