"""The public HTTP endpoints reached from the mail: open pixel, click redirect, unsubscribe.

Each route verifies the signed token, calls a handler, and answers. A token that does not
verify gets the same 404 whatever the reason, so probing says nothing about what is wrong.
Every answer is ``no-store``: a cached pixel or redirect would hide the next open or click.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Awaitable
from typing import Annotated, Any, cast
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from services.common.kafka_probe import describe
from services.common.links import InvalidLink, LinkClaims, LinkKind, verify
from services.tracking import handlers
from services.tracking.config import Settings
from services.tracking.handlers import EventPublisher

log = logging.getLogger(__name__)

# The smallest transparent GIF (1x1, 43 bytes).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"}
PAGE_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}
MAX_FORM_BYTES = 4096
MAX_FORM_FIELDS = 20  # one-click posts one field, the page's button one
ONE_CLICK = ("List-Unsubscribe", "One-Click")  # RFC 8058 section 3.1

router = APIRouter()


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_publisher(request: Request) -> EventPublisher:
    return cast(EventPublisher, request.app.state.publisher)


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[EventPublisher, Depends(get_publisher)]
UserAgent = Annotated[str, Header()]


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=NO_STORE,
    )


def _claims(settings: Settings, token: str, kind: LinkKind) -> LinkClaims:
    try:
        claims = verify(settings.link_secret, token, kind)
    except InvalidLink as err:
        log.info("rejected a %s link: %s", kind.name.lower(), err)
        raise HTTPException(404) from err
    return claims


async def _within(settings: Settings, publishing: Awaitable[str]) -> str:
    return await asyncio.wait_for(publishing, settings.publish_timeout_s)


@router.get("/o/{token}.gif", include_in_schema=False)
async def open_pixel(
    token: str, settings: SettingsDep, publisher: PublisherDep, user_agent: UserAgent = ""
) -> Response:
    claims = _claims(settings, token, LinkKind.OPEN)
    try:
        await _within(settings, handlers.record_open(publisher, claims, user_agent))
    except Exception:
        # The reader must still see an image; the lost open is in the logs.
        log.exception("could not publish an open of message %s", claims.message_id)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/c/{token}", include_in_schema=False)
async def click(
    token: str, settings: SettingsDep, publisher: PublisherDep, user_agent: UserAgent = ""
) -> Response:
    claims = _claims(settings, token, LinkKind.CLICK)
    try:
        await _within(settings, handlers.record_click(publisher, claims, user_agent))
    except Exception:
        # The reader must still get where they were going; the lost click is in the logs.
        log.exception("could not publish a click on message %s", claims.message_id)
    return RedirectResponse(claims.url, status_code=302, headers=NO_STORE)


@router.get("/u/{token}", include_in_schema=False)
async def preference_page(token: str, settings: SettingsDep) -> Response:
    """Only shows the question: link scanners fetch every GET, so a GET must not unsubscribe."""
    _claims(settings, token, LinkKind.UNSUBSCRIBE)
    return HTMLResponse(_page(confirm_body()), headers=PAGE_HEADERS)


@router.post("/u/{token}", include_in_schema=False)
async def unsubscribe(
    token: str, request: Request, settings: SettingsDep, publisher: PublisherDep
) -> Response:
    """RFC 8058 one-click (mail providers post ``List-Unsubscribe=One-Click``) and the
    preference page's button both land here."""
    claims = _claims(settings, token, LinkKind.UNSUBSCRIBE)
    form = await _read_form(request)
    one_click = ONE_CLICK[1] in form.get(ONE_CLICK[0], [])
    try:
        await _within(
            settings, handlers.request_unsubscribe(publisher, claims, one_click=one_click)
        )
    except Exception:
        # An unsubscribe must not be lost silently: the provider or the reader can retry.
        log.exception("could not publish an unsubscribe from message %s", claims.message_id)
        return HTMLResponse(_page(RETRY_BODY), status_code=503, headers=PAGE_HEADERS)
    return HTMLResponse(_page(done_body()), headers=PAGE_HEADERS)


@router.get("/healthz", include_in_schema=False)
async def healthz(settings: SettingsDep, publisher: PublisherDep) -> JSONResponse:
    started = time.perf_counter()
    check: dict[str, Any]
    try:
        brokers = await asyncio.wait_for(publisher.brokers(), settings.health_timeout_s)
        check = {"ok": brokers > 0, "brokers": brokers}
    except Exception as err:
        check = {"ok": False, "detail": describe(err)}
    check["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    check["kind"] = settings.kafka_kind
    ok = bool(check["ok"])
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "checks": {"kafka": check}},
        status_code=200 if ok else 503,
        headers=NO_STORE,
    )


async def _read_form(request: Request) -> dict[str, list[str]]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413)
    try:
        return parse_qs(body.decode("utf-8", "replace"), max_num_fields=MAX_FORM_FIELDS)
    except ValueError as err:  # more fields than MAX_FORM_FIELDS
        raise HTTPException(400, f"the form has more than {MAX_FORM_FIELDS} fields") from err


# What an unsubscribe does: contacts withdraws the consents to marketing, targeted messages
# and automations (UnsubscribeRequested on tracking.events.v1); transactional mail, such as
# order confirmations, needs no consent and keeps coming. The pages say exactly that.
TRANSACTIONAL_NOTE = "E-mails about your orders, such as confirmations, will still arrive."


def _sender(name: str | None) -> str:
    """The workspace's name when known; the links carry only its id, so usually not."""
    return html.escape(name) if name else "this sender"


def confirm_body(sender_name: str | None = None) -> str:
    return f"""<h1>Unsubscribe</h1>
<p>Do you want to stop receiving marketing and automated e-mails from {_sender(sender_name)}?
{TRANSACTIONAL_NOTE}</p>
<form method="post">
<input type="hidden" name="confirm" value="unsubscribe">
<button type="submit">Unsubscribe</button>
</form>"""


def done_body(sender_name: str | None = None) -> str:
    return f"""<h1>You are unsubscribed</h1>
<p>You will no longer receive marketing or automated e-mails from {_sender(sender_name)}.
{TRANSACTIONAL_NOTE} It can take a few minutes to apply.</p>"""


RETRY_BODY = """<h1>Something went wrong</h1>
<p>We could not record your request. Please try again in a minute.</p>"""


def _page(body: str, title: str = "Unsubscribe") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.6rem 1.2rem}</style>"
        f"</head><body><main>{body}</main></body></html>"
    )
