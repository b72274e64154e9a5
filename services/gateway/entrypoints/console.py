"""``/console``: the web console's files, served by the gateway on the API's own origin.

The console is plain ES modules and CSS committed under services/gateway/console/ (no
bundler, so nothing is built at run time, nor by ``make run``). It uses only the public
``/v1`` routes, signed in with the session cookie (sessions.py).

Only the files of that directory are served, by name (no path from the request reaches
the file system), each with a strict Content-Security-Policy: scripts and styles from this
origin only, none inline, no framing. With every page rendering data through
``textContent`` and DOM APIs, a name or subject holding markup can neither run nor style
anything.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from services.gateway import problems

router = APIRouter(include_in_schema=False)

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files that change with each release: always revalidated, never stale.
    "Cache-Control": "no-cache",
}


def _files() -> dict[str, Path]:
    return {
        path.name: path
        for path in sorted(CONSOLE_DIR.iterdir())
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


FILES = _files()


def _serve(name: str) -> Response:
    path = FILES.get(name)
    if path is None:
        raise problems.Problem(404, "not-found", "Not found", f"no console file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/console")
async def console_page() -> Response:
    """The console's one page; its script shows the sign-in or the Overview."""
    return _serve("index.html")


@router.get("/console/")
async def console_slash() -> Response:
    return RedirectResponse("/console", status_code=308)


@router.get("/console/{name}")
async def console_file(name: str) -> Response:
    return _serve(name)
