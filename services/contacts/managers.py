"""The managers of a workspace: who may sign in to the web console, and with which role.

Contacts owns them beside the workspaces and their API keys (table ``managers``, migration
0060). An e-mail address signs in to one workspace, so it is unique across workspaces
(case-insensitively) and the login form needs no workspace field.

Passwords are kept only as argon2id hashes (argon2-cffi's RFC 9106 low-memory profile);
hashing and checking run in a worker thread, since one check takes tens of milliseconds of
CPU and would otherwise stall every other call of this process. An unknown e-mail is
checked against a dummy hash, so it costs the same time as a wrong password and gets the
same answer: the login cannot be used to learn which addresses have an account. A hash made
with weaker parameters than today's is replaced at the next successful sign-in.

Roles: an owner may do everything, including managing managers and API keys; a manager
everything else; a viewer only reads. The gateway enforces them on the console's session
(services/gateway/sessions.py); a workspace always keeps at least one owner.

Removing a manager also ends their console sessions at once: the removal writes
``nudge:manager-removed:<id>`` to Redis (:data:`services.common.auth.MANAGER_REMOVED_PREFIX`),
which the gateway reads with every session it accepts. Changing a manager's role ends
their sessions too (they sign in again and get the new role): rather than re-reading the
role from here on every console request, the change marks an instant in Redis
(:data:`services.common.auth.SESSIONS_ENDED_PREFIX`) and the gateway ends every session of
that manager signed in at or before it. A role is kept in the session, so this is the one
way a demotion takes effect at once without a call to contacts per request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2
from redis.exceptions import RedisError

from services.common.auth import (
    MANAGER_REMOVED_TTL_S,
    MARK_SESSIONS_ENDED_SCRIPT,
    manager_removed_key,
    sessions_ended_key,
)
from services.common.contact_limits import check_email
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Unauthenticated,
    Validator,
)

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
# argon2 hashes whatever it is given; a bound keeps a huge "password" from costing more.
MAX_PASSWORD_LENGTH = 1024
Role = contacts_pb2.ManagerRole
ROLES = (Role.MANAGER_ROLE_OWNER, Role.MANAGER_ROLE_MANAGER, Role.MANAGER_ROLE_VIEWER)
WRONG_CREDENTIALS = "wrong e-mail or password"

_hasher = PasswordHasher()
# Checked when the e-mail is unknown, so that answer takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(32))

_COLUMNS = "id, workspace_id, email, role, created_at"


@dataclass(frozen=True)
class SignedIn:
    manager: contacts_pb2.Manager
    workspace_name: str


def manager_to_proto(row: asyncpg.Record) -> contacts_pb2.Manager:
    created = Timestamp()
    created.FromDatetime(row["created_at"])
    return contacts_pb2.Manager(
        id=str(row["id"]),
        workspace_id=str(row["workspace_id"]),
        email=row["email"],
        role=row["role"],
        created_at=created,
    )


def validate_new_manager(email: str, password: str, role: int) -> str:
    """The normalised e-mail of a valid new manager; INVALID_ARGUMENT naming each bad field."""
    v = Validator()
    normalized, reason = check_email(email.strip())
    v.check(bool(email.strip()), "email", "is required")
    v.check(not email.strip() or not reason, "email", reason or "not an e-mail address")
    v.check(
        len(password) >= MIN_PASSWORD_LENGTH,
        "password",
        f"shorter than {MIN_PASSWORD_LENGTH} characters",
    )
    v.check(
        len(password) <= MAX_PASSWORD_LENGTH,
        "password",
        f"longer than {MAX_PASSWORD_LENGTH} characters",
    )
    v.check(role in ROLES, "role", "must be MANAGER_ROLE_OWNER, _MANAGER or _VIEWER")
    v.raise_if_any()
    return normalized


def _workspace(workspace_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(workspace_id)
    except ValueError:
        raise NotFound("no such workspace") from None


async def _lock_workspace(conn: asyncpg.Connection, workspace_id: str) -> None:
    """Serialises manager changes of one workspace (the last-owner rule below)."""
    found = await conn.fetchval(
        "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", _workspace(workspace_id)
    )
    if found is None:
        raise NotFound("no such workspace")


async def create_manager(
    pool: asyncpg.Pool, workspace_id: str, email: str, password: str, role: int
) -> contacts_pb2.Manager:
    normalized = validate_new_manager(email, password, role)
    password_hash = await asyncio.to_thread(_hasher.hash, password)
    async with pool.acquire() as conn, conn.transaction():
        await _lock_workspace(conn, workspace_id)
        try:
            row = await conn.fetchrow(
                "INSERT INTO managers (id, workspace_id, email, password_hash, role)"
                f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
                uuid.uuid4(),
                _workspace(workspace_id),
                normalized,
                password_hash,
                role,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"{normalized} already has a console account") from None
    assert row is not None
    return manager_to_proto(row)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def authenticate_manager(pool: asyncpg.Pool, email: str, password: str) -> SignedIn:
    """The manager with this e-mail and password; UNAUTHENTICATED with one message for an
    unknown e-mail, a wrong password or an unusable input (see the module docstring)."""
    normalized, reason = check_email(email.strip())
    row = None
    if not reason and 0 < len(password) <= MAX_PASSWORD_LENGTH:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT m.id, m.workspace_id, m.email, m.role, m.created_at, m.password_hash,"
                " w.name FROM managers m JOIN workspaces w ON w.id = m.workspace_id"
                " WHERE lower(m.email) = lower($1)",
                normalized,
            )
    stored = row["password_hash"] if row is not None else _DUMMY_HASH
    matches = await asyncio.to_thread(_verify, stored, password[:MAX_PASSWORD_LENGTH])
    if row is None or not matches:
        raise Unauthenticated(WRONG_CREDENTIALS)
    if _hasher.check_needs_rehash(stored):
        await _rehash(pool, row["workspace_id"], row["id"], password)
    return SignedIn(manager_to_proto(row), row["name"])


async def _rehash(
    pool: asyncpg.Pool, workspace_id: uuid.UUID, manager_id: uuid.UUID, password: str
) -> None:
    new_hash = await asyncio.to_thread(_hasher.hash, password)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE managers SET password_hash = $3 WHERE workspace_id = $1 AND id = $2",
            workspace_id,
            manager_id,
            new_hash,
        )


async def list_managers(pool: asyncpg.Pool, workspace_id: str) -> list[contacts_pb2.Manager]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM managers WHERE workspace_id = $1 ORDER BY lower(email), id",
            _workspace(workspace_id),
        )
    return [manager_to_proto(row) for row in rows]


def _manager_id(v: Validator, manager_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(manager_id)
    except ValueError:
        v.check(False, "manager_id", "not a manager id (a UUID)")
        return None


async def _locked_manager(
    conn: asyncpg.Connection, workspace_id: str, wanted: uuid.UUID
) -> asyncpg.Record:
    """The manager's row, under the workspace's lock (taken here, held to the commit)."""
    await _lock_workspace(conn, workspace_id)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM managers WHERE id = $1 AND workspace_id = $2",
        wanted,
        _workspace(workspace_id),
    )
    if row is None:
        raise NotFound(f"no manager {wanted} in this workspace")
    return row


async def _check_not_last_owner(
    conn: asyncpg.Connection, workspace_id: str, row: asyncpg.Record, what: str
) -> None:
    if row["role"] != Role.MANAGER_ROLE_OWNER:
        return
    owners = await conn.fetchval(
        "SELECT count(*) FROM managers WHERE workspace_id = $1 AND role = $2",
        _workspace(workspace_id),
        Role.MANAGER_ROLE_OWNER,
    )
    if owners <= 1:
        raise FailedPrecondition(f"the workspace's last owner cannot be {what}")


async def update_manager(
    pool: asyncpg.Pool, redis: aioredis.Redis, workspace_id: str, manager_id: str, role: int
) -> contacts_pb2.Manager:
    """Gives the manager ``role`` and ends their sessions; never demotes the workspace's
    last owner. The same role again changes nothing (and ends no session). Another
    workspace's manager is NOT_FOUND, like an unknown one."""
    v = Validator()
    wanted = _manager_id(v, manager_id)
    v.check(role in ROLES, "role", "must be MANAGER_ROLE_OWNER, _MANAGER or _VIEWER")
    v.raise_if_any()
    assert wanted is not None
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked_manager(conn, workspace_id, wanted)
        if row["role"] == role:
            return manager_to_proto(row)
        if role != Role.MANAGER_ROLE_OWNER:
            await _check_not_last_owner(conn, workspace_id, row, "demoted")
        row = await conn.fetchrow(
            f"UPDATE managers SET role = $3 WHERE workspace_id = $1 AND id = $2"
            f" RETURNING {_COLUMNS}",
            _workspace(workspace_id),
            wanted,
            role,
        )
    assert row is not None
    await _end_sessions(redis, str(wanted))
    return manager_to_proto(row)


async def _end_sessions(redis: aioredis.Redis, manager_id: str) -> None:
    """After the commit, unlike a removal's marker: the mark must come after the change, so
    that a sign-in later than the mark reads the new role (services/common/auth.py). Without
    Redis the change still stands, and the old sessions end at their idle expiry."""
    try:
        await redis.eval(  # type: ignore[misc]
            MARK_SESSIONS_ENDED_SCRIPT, 1, sessions_ended_key(manager_id), MANAGER_REMOVED_TTL_S
        )
    except RedisError:
        log.error(
            "Redis unavailable: the sessions of manager %s keep their old role until they expire",
            manager_id,
            exc_info=True,
        )


async def remove_manager(
    pool: asyncpg.Pool, redis: aioredis.Redis, workspace_id: str, manager_id: str
) -> contacts_pb2.Manager:
    """Removes the manager and ends their sessions; never the workspace's last owner.
    Another workspace's manager is NOT_FOUND, like an unknown one."""
    v = Validator()
    wanted = _manager_id(v, manager_id)
    v.raise_if_any()
    assert wanted is not None
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked_manager(conn, workspace_id, wanted)
        await _check_not_last_owner(conn, workspace_id, row, "removed")
        await conn.execute(
            "DELETE FROM managers WHERE workspace_id = $1 AND id = $2",
            _workspace(workspace_id),
            wanted,
        )
        # Before the commit, like an API key's tombstone: once the call returns, no session
        # of this manager is accepted any more. Without Redis the removal still commits,
        # and the sessions end at their idle expiry.
        try:
            await redis.set(manager_removed_key(str(wanted)), b"1", ex=MANAGER_REMOVED_TTL_S)
        except RedisError:
            log.error(
                "Redis unavailable: the sessions of removed manager %s last until they expire",
                manager_id,
                exc_info=True,
            )
    return manager_to_proto(row)
