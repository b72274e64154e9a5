"""The web console's sessions: a manager signs in with e-mail and password
(``POST /v1/session``, entrypoints/session.py) and gets a cookie; every ``/v1`` route then
accepts that cookie instead of an API key (deps.py ``get_caller``).

Why it is built this way:

- The cookie holds only an opaque random id (256 bits). The session lives in Redis under
  the SHA-256 of that id (``nudge:session:<sha256>``), so a copy of Redis holds no usable
  cookie. It ends after ``session_idle_s`` without a request (each accepted request renews
  the key's TTL) and in any case ``session_max_s`` after sign-in; ``DELETE /v1/session``
  deletes it at once.
- The cookie is ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` and, over https,
  ``Secure`` with the ``__Host-`` prefix (no other host or path can set or shadow it).
- CSRF: every unsafe method authenticated by the cookie must carry ``X-CSRF-Token`` equal to
  the session's own random token (compared in constant time). The console learns the token
  from the answers of ``POST``/``GET /v1/session``, which another origin cannot read; the
  token is bound to the session, so a token from another session is refused. Calls with a
  bearer API key carry no cookie and need no token.
- A session acts for its workspace: the gateway forwards the internal token with the
  workspace id (services/common/auth.py), and enforces the manager's role itself, before
  any service is called: a viewer may only read; managers and API keys are the owner's.
- A removed manager's sessions end at once: contacts writes a marker to Redis when it
  removes one (services/contacts/managers.py), read here with every session accepted.
- So do the sessions of a manager whose role changed (the role is kept in the session, and
  asking contacts for it on every request would cost a call each): contacts marks the
  instant of the change on Redis's clock, and a session signed in at or before it ends.
  The sign-in reads that clock before the password is checked (:meth:`SessionStore.now_us`),
  so a session that may hold the old role is never newer than the mark.
- Sign-in is throttled per e-mail and per client address (:class:`LoginThrottle`): after
  ``max_failures`` failures for one e-mail within ``window_s`` (or
  ``max_failures_per_address`` from one address: an office behind one NAT address has
  several managers, so it gets more room), 429 with ``Retry-After`` until the window ends,
  whether or not the password is right. The address is the client's as uvicorn reports it:
  the TCP peer's, or the ``X-Forwarded-For`` of a proxy named in ``FORWARDED_ALLOW_IPS``
  (uvicorn's setting, 127.0.0.1 by default; the README says so to operators).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from fastapi import Request, Response

from services.common.auth import manager_removed_key, sessions_ended_key

log = logging.getLogger(__name__)

SESSION_PREFIX = "nudge:session:"
FAILURES_PREFIX = "nudge:login-failures:"
CSRF_HEADER = "X-CSRF-Token"
SECURE_COOKIE = "__Host-nudge_session"
PLAIN_COOKIE = "nudge_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Roles as the gateway names them (contacts.v1.ManagerRole without its prefix).
OWNER, MANAGER, VIEWER = "owner", "manager", "viewer"
ROLES = (OWNER, MANAGER, VIEWER)
# Paths only an owner may use, whatever the method: the team and the API keys.
OWNER_PATHS = ("/v1/managers", "/v1/api-keys")
# POSTs that change nothing (a rule counted, previewed or checked, a definition checked): a
# viewer may make them, so the console's rule builder counts and previews and its workflow
# form checks for a viewer too. Exact paths: nothing under them.
READ_ONLY_POSTS = frozenset(
    {
        "/v1/segments:count",
        "/v1/segments:preview",
        "/v1/segments:validate",
        "/v1/segments:overlap",
        "/v1/workflows:validate",
    }
)


@dataclass(frozen=True)
class Session:
    manager_id: str
    email: str
    role: str
    workspace_id: str
    workspace_name: str
    csrf_token: str
    created_at: float  # time.time() at sign-in
    expires_at: float  # created_at + session_max_s
    # Redis's clock (microseconds) before the password was checked; 0 in sessions made
    # before it was kept, which a role change therefore ends too.
    signed_in_us: int = 0

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes) -> Session | None:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def session_key(session_id: str) -> str:
    return f"{SESSION_PREFIX}{_digest(session_id)}"


class SessionStore:
    def __init__(self, redis: aioredis.Redis, *, idle_s: float, max_s: float) -> None:
        self.redis = redis
        self.idle_s = idle_s
        self.max_s = max_s

    async def now_us(self) -> int:
        """Redis's clock in microseconds: the one a role change marks its instant with."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1_000_000 + int(micros)

    async def create(
        self,
        *,
        manager_id: str,
        email: str,
        role: str,
        workspace_id: str,
        workspace_name: str,
        signed_in_us: int,
    ) -> tuple[str, Session]:
        """A new session and the id its cookie carries (shown only here)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(
            manager_id=manager_id,
            email=email,
            role=role,
            workspace_id=workspace_id,
            workspace_name=workspace_name,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.max_s,
            signed_in_us=signed_in_us,
        )
        await self.redis.set(session_key(session_id), session.encode(), ex=self._ttl(session))
        return session_id, session

    def _ttl(self, session: Session) -> int:
        """Seconds the Redis key may live: the idle time, but never past the session's end."""
        return max(1, int(min(self.idle_s, session.expires_at - time.time())))

    async def get(self, session_id: str) -> Session | None:
        """The live session of the cookie's id, renewed for another idle period; None when it
        is unknown, ended, or its manager was removed or given another role since."""
        key = session_key(session_id)
        raw = await self.redis.get(key)
        session = Session.decode(raw) if raw is not None else None
        if session is None:
            return None
        if session.expires_at <= time.time():
            await self.redis.delete(key)
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(manager_removed_key(session.manager_id))
            pipe.get(sessions_ended_key(session.manager_id))
            pipe.expire(key, self._ttl(session))
            removed, ended_us, _ = await pipe.execute()
        if removed or (ended_us is not None and session.signed_in_us <= int(ended_us)):
            await self.redis.delete(key)
            return None
        return session

    async def delete(self, session_id: str) -> None:
        await self.redis.delete(session_key(session_id))


class LoginThrottle:
    """Failed sign-ins counted in Redis per e-mail and per client address, in a fixed
    window that starts at the first failure."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        max_failures: int,
        max_failures_per_address: int,
        window_s: int,
    ) -> None:
        self.redis = redis
        self.max_failures = max_failures
        self.max_failures_per_address = max_failures_per_address
        self.window_s = window_s

    @staticmethod
    def _keys(email: str, address: str) -> tuple[str, str]:
        email_hash = hashlib.sha256(email.strip().lower().encode()).hexdigest()
        return f"{FAILURES_PREFIX}email:{email_hash}", f"{FAILURES_PREFIX}addr:{address}"

    async def retry_after(self, email: str, address: str) -> int:
        """Seconds until a sign-in may be tried again; 0 when it may be tried now."""
        keys = self._keys(email, address)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.ttl(key)
            email_count, email_ttl, addr_count, addr_ttl = await pipe.execute()
        wait = 0
        for count, ttl, limit in (
            (email_count, email_ttl, self.max_failures),
            (addr_count, addr_ttl, self.max_failures_per_address),
        ):
            if count is not None and int(count) >= limit:
                wait = max(wait, int(ttl) if int(ttl) > 0 else self.window_s)
        return wait

    async def failed(self, email: str, address: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._keys(email, address):
                pipe.set(key, 0, ex=self.window_s, nx=True)
                pipe.incr(key)
            await pipe.execute()

    async def succeeded(self, email: str) -> None:
        """Forget the e-mail's failures (not the address's: a right password for one account
        must not buy more guesses at the others)."""
        await self.redis.delete(self._keys(email, "")[0])


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_name(request: Request) -> str:
    return SECURE_COOKIE if is_https(request) else PLAIN_COOKIE


def set_cookie(request: Request, response: Response, session_id: str) -> None:
    response.set_cookie(
        cookie_name(request),
        session_id,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        cookie_name(request), path="/", httponly=True, samesite="strict", secure=is_https(request)
    )


def cookie_of(request: Request) -> str | None:
    value = request.cookies.get(cookie_name(request))
    # An id is 43 URL-safe characters; anything else is not worth a Redis round trip.
    if value is None or not 20 <= len(value) <= 100:
        return None
    return value


def csrf_ok(request: Request, session: Session) -> bool:
    """Safe methods need no token; unsafe ones the session's own."""
    if request.method in SAFE_METHODS:
        return True
    offered = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(offered.encode(), session.csrf_token.encode())


def role_refusal(method: str, path: str, role: str) -> str | None:
    """Why ``role`` may not make this request, or None when it may."""
    if path.startswith(OWNER_PATHS) and role != OWNER:
        return "only the workspace's owner manages managers and API keys"
    read_only = method in SAFE_METHODS or (method == "POST" and path in READ_ONLY_POSTS)
    if not read_only and role == VIEWER:
        return "a viewer may only read"
    if role not in ROLES:
        return "unknown role"
    return None
