"""WorkspaceService's key RPCs and /v1/api-keys: what they answer, what they never show,
and every kind of bad request, each refused precisely with nothing written."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import grpc
import httpx
import pytest
from google.protobuf import text_format
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2

from services.common.config import InternalAuthSettings
from services.contacts import keys
from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import new_workspace
from tests.integration.keys.conftest import (
    Stubs,
    accepted_by,
    bearer,
    create_key,
    shifted_clock,
)

PROBLEM = "application/problem+json"


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    found: dict[str, str] = {}
    for detail in status.details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            found.update({v.field: v.description for v in request.field_violations})
    return found


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def keys_of(stubs: Stubs, workspace: Workspace, include_revoked: bool = False) -> list[str]:
    answer = await stubs.workspaces.ListApiKeys(
        contacts_pb2.ListApiKeysRequest(include_revoked=include_revoked),
        metadata=workspace.metadata,
    )
    return [k.key_id for k in answer.keys]


async def test_a_created_key_works_and_is_listed_without_its_secret_or_hash(
    contacts_service: RunningService, stubs: Stubs, workspace: Workspace, http: httpx.AsyncClient
) -> None:
    created = await create_key(stubs, workspace, "CRM sync")
    secret = created.api_key
    assert secret.startswith(f"nk_{created.key.key_id}_")
    assert created.key.name == "CRM sync" and created.key.HasField("created_at")
    assert await accepted_by("contacts", contacts_service.address, secret)

    listed = await stubs.workspaces.ListApiKeys(
        contacts_pb2.ListApiKeysRequest(include_revoked=True), metadata=workspace.metadata
    )
    assert created.key.key_id in [k.key_id for k in listed.keys]
    over_http = await http.get(
        "/v1/api-keys",
        params={"include_revoked": "true"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert over_http.status_code == 200, over_http.text
    assert created.key.key_id in [k["key_id"] for k in over_http.json()["keys"]]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    # Everything after "nk_<key id>_": the secret itself may contain "_" (URL-safe base64),
    # so splitting at the last one could leave a single character that any answer contains.
    secret_part = secret.removeprefix(f"nk_{created.key.key_id}_")
    for shown in (
        listed.SerializeToString().decode("latin-1"),
        text_format.MessageToString(listed),
        over_http.text,
    ):
        for leak in (secret, secret_part, digest, digest.upper()):
            assert leak not in shown


async def test_a_key_of_another_workspace_is_not_found_and_untouched(
    contacts_service: RunningService, stubs: Stubs, workspace: Workspace, http: httpx.AsyncClient
) -> None:
    other = await new_workspace(contacts_service)
    theirs = await create_key(stubs, other, "theirs")
    for call in (
        stubs.workspaces.RevokeApiKey(
            contacts_pb2.RevokeApiKeyRequest(key_id=theirs.key.key_id), metadata=workspace.metadata
        ),
        stubs.workspaces.RotateApiKey(
            contacts_pb2.RotateApiKeyRequest(key_id=theirs.key.key_id), metadata=workspace.metadata
        ),
    ):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND
    answer = await http.post(
        f"/v1/api-keys/{theirs.key.key_id}:revoke",
        headers={"Authorization": f"Bearer {workspace.api_key}"},
    )
    assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM
    assert theirs.key.key_id not in await keys_of(stubs, workspace, include_revoked=True)
    assert theirs.key.key_id in await keys_of(stubs, other)  # neither revoked nor rotated
    assert await accepted_by("contacts", contacts_service.address, theirs.api_key)


async def test_bad_names_are_refused_with_the_field(
    stubs: Stubs, workspace: Workspace, http: httpx.AsyncClient
) -> None:
    before = await keys_of(stubs, workspace, include_revoked=True)
    for name, reason in [
        ("", "is required"),
        ("   ", "is required"),
        ("x" * 101, "longer than 100 characters"),
        ("tab\there", "contains a control character"),
        ("nul\x00", "contains a control character"),
        ("x" * 1_000_000, "longer than 100 characters"),
    ]:
        err = await rpc_error(
            stubs.workspaces.CreateApiKey(
                contacts_pb2.CreateApiKeyRequest(name=name), metadata=workspace.metadata
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err) == {"name": reason}
    auth = {"Authorization": f"Bearer {workspace.api_key}"}
    for body in ({"name": ""}, {"name": 42}, {"name": "x" * 101}, {}, {"name": "a", "extra": 1}):
        answer = await http.post("/v1/api-keys", json=body, headers=auth)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"] == PROBLEM
    for name in ("bell\x07", "   ", "\x7f"):
        refused = await http.post("/v1/api-keys", json={"name": name}, headers=auth)
        assert refused.status_code == 422
        assert refused.json()["errors"] == [
            {"field": "name", "message": "must not be blank or contain control characters"}
        ]
    assert await keys_of(stubs, workspace, include_revoked=True) == before


async def test_a_malformed_request_body_is_invalid_argument(
    contacts_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        raw = channel.unary_unary("/nudge.contacts.v1.WorkspaceService/CreateApiKey")
        err = await rpc_error(raw(b"\xff\xff\xff not protobuf", metadata=bearer(workspace.api_key)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "body" in violations(err)


async def test_bad_key_ids_and_overlaps_are_refused_with_the_field(
    stubs: Stubs, workspace: Workspace, http: httpx.AsyncClient
) -> None:
    mine = await create_key(stubs, workspace)
    for key_id in ("", "XYZ", "0123456789abcdeg", "0" * 17, "../" * 20, "0" * 63):
        err = await rpc_error(
            stubs.workspaces.RevokeApiKey(
                contacts_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=workspace.metadata
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(violations(err)) == ["key_id"]
    for overlap, reason in [
        (Duration(seconds=-1), "must not be negative"),
        (Duration(seconds=30 * 86400 + 1), "longer than 30 days"),
    ]:
        err = await rpc_error(
            stubs.workspaces.RotateApiKey(
                contacts_pb2.RotateApiKeyRequest(key_id=mine.key.key_id, overlap=overlap),
                metadata=workspace.metadata,
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err) == {"overlap": reason}
    auth = {"Authorization": f"Bearer {workspace.api_key}"}
    for body in ({"overlap_seconds": -1}, {"overlap_seconds": "60"}, {"overlap_seconds": 2592001}):
        answer = await http.post(f"/v1/api-keys/{mine.key.key_id}:rotate", json=body, headers=auth)
        assert answer.status_code == 422, (body, answer.text)
    for bad_id in ("not-a-key", "0" * 63, "0123456789ABCDEF"):
        refused = await http.post(f"/v1/api-keys/{bad_id}:revoke", headers=auth)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["field"] == "path.key_id"
    # Nothing was rotated or revoked by any of them.
    listed = await stubs.workspaces.ListApiKeys(
        contacts_pb2.ListApiKeysRequest(include_revoked=True), metadata=workspace.metadata
    )
    (still,) = [k for k in listed.keys if k.key_id == mine.key.key_id]
    assert not still.HasField("revoked_at") and not still.HasField("expires_at")
    assert len(listed.keys) == 2


async def test_revoking_twice_answers_the_same_key_and_listing_hides_it(
    stubs: Stubs, workspace: Workspace
) -> None:
    spare = await create_key(stubs, workspace, "spare")
    request = contacts_pb2.RevokeApiKeyRequest(key_id=spare.key.key_id)
    first = await stubs.workspaces.RevokeApiKey(request, metadata=workspace.metadata)
    again = await stubs.workspaces.RevokeApiKey(request, metadata=workspace.metadata)
    assert first.key.HasField("revoked_at")
    assert again.key.revoked_at == first.key.revoked_at
    assert spare.key.key_id not in await keys_of(stubs, workspace)
    assert spare.key.key_id in await keys_of(stubs, workspace, include_revoked=True)
    err = await rpc_error(
        stubs.workspaces.RotateApiKey(
            contacts_pb2.RotateApiKeyRequest(key_id=spare.key.key_id), metadata=workspace.metadata
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_the_last_working_key_cannot_be_revoked_but_can_be_rotated_away(
    contacts_service: RunningService, stubs: Stubs, workspace: Workspace
) -> None:
    (only,) = await keys_of(stubs, workspace)
    err = await rpc_error(
        stubs.workspaces.RevokeApiKey(
            contacts_pb2.RevokeApiKeyRequest(key_id=only), metadata=workspace.metadata
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "last working API key" in (err.details() or "")
    assert await accepted_by("contacts", contacts_service.address, workspace.api_key)

    rotated = await stubs.workspaces.RotateApiKey(
        contacts_pb2.RotateApiKeyRequest(key_id=only, overlap=Duration(seconds=0)),
        metadata=workspace.metadata,
    )
    assert not await accepted_by("contacts", contacts_service.address, workspace.api_key)
    assert await accepted_by("contacts", contacts_service.address, rotated.api_key)
    # A key is rotated once: a replay of the rotation is refused, and makes no third key.
    err = await rpc_error(
        stubs.workspaces.RotateApiKey(
            contacts_pb2.RotateApiKeyRequest(key_id=only), metadata=bearer(rotated.api_key)
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await keys_of(stubs, Workspace(workspace.id, rotated.api_key), True) == [
        rotated.new_key.key_id,
        only,
    ]


async def test_a_workspace_holds_a_bounded_number_of_working_keys(
    contacts_service: RunningService, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = await new_workspace(contacts_service)
    monkeypatch.setattr(keys, "MAX_ACTIVE_KEYS", 3)
    await create_key(stubs, workspace)
    await create_key(stubs, workspace)
    err = await rpc_error(
        stubs.workspaces.CreateApiKey(
            contacts_pb2.CreateApiKeyRequest(name="one too many"), metadata=workspace.metadata
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(await keys_of(stubs, workspace, include_revoked=True)) == 3


async def test_authenticate_refuses_revoked_and_expired_keys_and_tells_a_keys_end(
    contacts_service: RunningService, stubs: Stubs, workspace: Workspace
) -> None:
    internal = (("authorization", f"Internal {InternalAuthSettings().internal_token}"),)
    revoked = await create_key(stubs, workspace, "to revoke")
    rotated = await create_key(stubs, workspace, "to rotate")
    await stubs.workspaces.RevokeApiKey(
        contacts_pb2.RevokeApiKeyRequest(key_id=revoked.key.key_id), metadata=workspace.metadata
    )
    answer = await stubs.workspaces.RotateApiKey(
        contacts_pb2.RotateApiKeyRequest(key_id=rotated.key.key_id, overlap=Duration(seconds=600)),
        metadata=workspace.metadata,
    )

    async def authenticate(api_key: str) -> contacts_pb2.AuthenticateApiKeyResponse:
        found: contacts_pb2.AuthenticateApiKeyResponse = await stubs.workspaces.AuthenticateApiKey(
            contacts_pb2.AuthenticateApiKeyRequest(api_key=api_key), metadata=internal
        )
        return found

    err = await rpc_error(authenticate(revoked.api_key))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "API key revoked")
    during = await authenticate(rotated.api_key)
    assert during.workspace_id == workspace.id
    assert during.expires_at == answer.old_key.expires_at
    assert not (await authenticate(answer.api_key)).HasField("expires_at")
    with shifted_clock() as now:
        now.offset = timedelta(seconds=601)
        err = await rpc_error(authenticate(rotated.api_key))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "API key expired")


async def test_an_overlap_written_as_a_whole_float_is_the_integer(
    stubs: Stubs, workspace: Workspace, http: httpx.AsyncClient
) -> None:
    """JSON Schema counts 60.0 as an integer; the OpenAPI document says integer."""
    mine = await create_key(stubs, workspace)
    answer = await http.post(
        f"/v1/api-keys/{mine.key.key_id}:rotate",
        json={"overlap_seconds": 60.0},
        headers={"Authorization": f"Bearer {workspace.api_key}"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    ends = datetime.fromisoformat(body["old_key"]["expires_at"])
    assert ends - datetime.fromisoformat(body["new_key"]["created_at"]) == timedelta(seconds=60)
    for bad in (60.5, True, "60"):
        refused = await http.post(
            f"/v1/api-keys/{body['new_key']['key_id']}:rotate",
            json={"overlap_seconds": bad},
            headers={"Authorization": f"Bearer {workspace.api_key}"},
        )
        assert refused.status_code == 422, (bad, refused.text)
