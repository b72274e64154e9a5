"""The public HTTP endpoints reached from the mail: unsubscribe, the preference page
(``/p/``) and the double opt-in confirmation (``/k/``); the open pixel and the click redirect
are served before FastAPI (services/tracking/entrypoints/fast.py).

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

import grpc
from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from nudge.contacts.v1.contacts_pb2 import Preferences, SetPreferencesRequest

from services.common.kafka_probe import describe
from services.common.links import ExpiredLink, InvalidLink, LinkClaims, LinkKind, verify
from services.tracking import handlers
from services.tracking.adapters.contacts import ConsentClient
from services.tracking.config import Settings
from services.tracking.entrypoints.fast import PIXEL

__all__ = ["PIXEL", "router"]
from services.tracking.handlers import EventPublisher

log = logging.getLogger(__name__)

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
    stats = getattr(publisher, "stats", None)
    if stats is not None:  # opens and clicks accepted, published and lost since start
        check["events"] = stats.as_dict()
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


# ---------------------------------------------------------------- the preference page

# What the page says, recorded with each change it makes as the wording the contact saw.
PREFERENCES_WORDING = (
    "Choose which e-mails you receive: targeted messages (offers picked for you), automated"
    " e-mails (reminders and follow-ups), newsletters and campaigns. " + TRANSACTIONAL_NOTE
)
CHOICES = (
    ("targeted_messages", "Targeted messages: offers picked for you"),
    ("automations", "Automated e-mails: reminders and follow-ups"),
    ("marketing", "Newsletters and campaigns"),
)


def get_consent(request: Request) -> ConsentClient:
    return cast(ConsentClient, request.app.state.consent)


ConsentDep = Annotated[ConsentClient, Depends(get_consent)]


def _link_page(status: int, title: str, text: str) -> HTMLResponse:
    body = f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    return HTMLResponse(_page(body, title), status_code=status, headers=PAGE_HEADERS)


def _verified(settings: Settings, token: str, kind: LinkKind) -> LinkClaims | HTMLResponse:
    """The link's claims, or the page that says why it cannot be used (never a grant)."""
    try:
        return verify(settings.link_secret, token, kind)
    except ExpiredLink:
        return _link_page(
            410,
            "This link has expired",
            "The link is no longer valid. Sign up again to receive a new confirmation e-mail.",
        )
    except InvalidLink as err:
        log.info("rejected a %s link: %s", kind.name.lower(), err)
        return _link_page(
            404, "This link is not valid", "Check that you opened the whole link from the e-mail."
        )


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def preferences_body(token: str, prefs: Preferences, saved: bool = False) -> str:
    boxes = "\n".join(
        f'<p><label><input type="checkbox" name="{name}" value="on"'
        f"{' checked' if getattr(prefs, name) else ''}> {html.escape(label)}</label></p>"
        for name, label in CHOICES
    )
    on = [label for name, label in CHOICES if getattr(prefs, name)]
    now = (
        "You receive: " + "; ".join(html.escape(x) for x in on) + "."
        if on
        else "You receive no marketing, targeted or automated e-mails."
    )
    suppressed = (
        "<p><strong>This address is blocked from all e-mails from this sender.</strong></p>"
        if prefs.suppressed
        else ""
    )
    status = '<p role="status">Your choices are saved.</p>' if saved else ""
    safe_token = html.escape(token)
    return f"""<h1>Your e-mail preferences</h1>
{status}
<p>For {html.escape(prefs.email)} at {_sender(prefs.workspace_name)}. {now}</p>
{suppressed}
<p>{html.escape(PREFERENCES_WORDING)}</p>
<form method="post">
<input type="hidden" name="token" value="{safe_token}">
<fieldset><legend>I want to receive</legend>
{boxes}
</fieldset>
<p><button type="submit" name="action" value="save">Save my choices</button></p>
<p><button type="submit" name="action" value="none">Unsubscribe from everything</button></p>
</form>"""


@router.get("/p/{token}", include_in_schema=False)
async def preferences(token: str, settings: SettingsDep, consent: ConsentDep) -> Response:
    """Shows what is on; changes nothing (link scanners fetch every GET)."""
    claims = _verified(settings, token, LinkKind.PREFERENCES)
    if isinstance(claims, HTMLResponse):
        return claims
    try:
        prefs = await consent.get_preferences(claims)
    except grpc.aio.AioRpcError as err:
        return _contacts_failure(err, claims)
    return HTMLResponse(
        _page(preferences_body(token, prefs), "E-mail preferences"), headers=PAGE_HEADERS
    )


@router.post("/p/{token}", include_in_schema=False)
async def save_preferences(
    token: str,
    request: Request,
    settings: SettingsDep,
    consent: ConsentDep,
    publisher: PublisherDep,
    user_agent: UserAgent = "",
) -> Response:
    """The page's form. The signed token in the form must be the link's: a page of another
    site cannot post it without having the link (it is the contact's credential)."""
    claims = _verified(settings, token, LinkKind.PREFERENCES)
    if isinstance(claims, HTMLResponse):
        return claims
    form = await _read_form(request)
    if form.get("token", [""])[0] != token:
        return _link_page(403, "This form is not valid", "Open the page from the e-mail again.")
    everything_off = form.get("action", [""])[0] == "none"
    wanted = {name: not everything_off and form.get(name, [""])[0] == "on" for name, _ in CHOICES}
    try:
        # What was on before, to tell tracking.events.v1 which switches this post changed.
        before = await consent.get_preferences(claims)
        prefs = await consent.set_preferences(
            claims,
            SetPreferencesRequest(
                ip=_client_ip(request),
                user_agent=user_agent[:512],
                wording=PREFERENCES_WORDING,
                targeted_messages=wanted["targeted_messages"],
                automations=wanted["automations"],
                marketing=wanted["marketing"],
            ),
        )
    except grpc.aio.AioRpcError as err:
        return _contacts_failure(err, claims)
    try:
        handlers.record_preferences(publisher, claims, before, prefs)
    except Exception:
        # Contacts holds the change; only the statistics event is lost (and logged).
        log.exception("could not record the preference change of %s", claims.contact_id)
    return HTMLResponse(
        _page(preferences_body(token, prefs, saved=True), "E-mail preferences"),
        headers=PAGE_HEADERS,
    )


def _contacts_failure(err: grpc.aio.AioRpcError, claims: LinkClaims) -> HTMLResponse:
    if err.code() == grpc.StatusCode.NOT_FOUND:
        return _link_page(404, "We no longer hold this address", "There is nothing to manage.")
    log.warning("contacts did not answer for contact %s: %s", claims.contact_id, err.code())
    return HTMLResponse(_page(RETRY_BODY), status_code=503, headers=PAGE_HEADERS)


# ---------------------------------------------------------------- double opt-in confirmation


@router.get("/k/{token}", include_in_schema=False)
async def confirmation_page(token: str, settings: SettingsDep) -> Response:
    """Asks for the click that confirms: a GET must not subscribe anybody, or every link
    scanner of a mail provider would confirm subscriptions nobody asked for."""
    claims = _verified(settings, token, LinkKind.CONFIRM)
    if isinstance(claims, HTMLResponse):
        return claims
    body = f"""<h1>Confirm your subscription</h1>
<p>Press the button to confirm that you want to receive our e-mails.</p>
<form method="post"><input type="hidden" name="token" value="{html.escape(token)}">
<button type="submit">Confirm my subscription</button></form>"""
    return HTMLResponse(_page(body, "Confirm your subscription"), headers=PAGE_HEADERS)


@router.post("/k/{token}", include_in_schema=False)
async def confirm(
    token: str,
    request: Request,
    settings: SettingsDep,
    consent: ConsentDep,
    user_agent: UserAgent = "",
) -> Response:
    claims = _verified(settings, token, LinkKind.CONFIRM)
    if isinstance(claims, HTMLResponse):
        return claims
    form = await _read_form(request)
    if form.get("token", [""])[0] != token:
        return _link_page(403, "This form is not valid", "Open the link from the e-mail again.")
    try:
        answer = await consent.confirm(claims, token, _client_ip(request), user_agent[:512])
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return _link_page(410, "This link has expired", "Sign up again to get a new link.")
        return _contacts_failure(err, claims)
    if not answer.confirmed:
        return _link_page(200, "Already confirmed", "Your subscription was confirmed before.")
    return _link_page(
        200,
        "Thank you, your subscription is confirmed",
        f"You will receive e-mails from {answer.workspace_name or 'this sender'}.",
    )
