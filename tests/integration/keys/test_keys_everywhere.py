"""A revoked key stops working at once on every service, and a rotated one at its end,
although every service had just cached it as valid (contacts in its process, the others
in Redis, the gateway forwarding to both)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from google.protobuf.duration_pb2 import Duration
from nudge.contacts.v1 import contacts_pb2

from tests.integration.conftest import Workspace
from tests.integration.keys.conftest import (
    Stubs,
    accepted_everywhere,
    create_key,
    shifted_clock,
)

EVERYWHERE = ["contacts", "segmentation", "campaigns", "delivery", "gateway"]


def everywhere(value: bool) -> dict[str, bool]:
    return dict.fromkeys(EVERYWHERE, value)


async def test_a_revoked_key_fails_on_the_very_next_call_on_every_service(
    key_services: dict[str, str], http: httpx.AsyncClient, stubs: Stubs, workspace: Workspace
) -> None:
    doomed = await create_key(stubs, workspace, "doomed")
    # Every service checks the key once: each now holds it as valid in its cache.
    assert await accepted_everywhere(key_services, http, doomed.api_key) == everywhere(True)
    assert await accepted_everywhere(key_services, http, doomed.api_key) == everywhere(True)

    revoked = await http.post(
        f"/v1/api-keys/{doomed.key.key_id}:revoke",
        headers={"Authorization": f"Bearer {workspace.api_key}"},
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None

    assert await accepted_everywhere(key_services, http, doomed.api_key) == everywhere(False)
    refused = await http.get("/v1/api-keys", headers={"Authorization": f"Bearer {doomed.api_key}"})
    assert refused.status_code == 401
    assert refused.json()["detail"] == "API key revoked"
    # The workspace's other key is untouched.
    assert await accepted_everywhere(key_services, http, workspace.api_key) == everywhere(True)


async def test_a_rotated_key_works_with_its_successor_until_its_end_then_only_the_new(
    key_services: dict[str, str], http: httpx.AsyncClient, stubs: Stubs, workspace: Workspace
) -> None:
    old = await create_key(stubs, workspace, "shop backend")
    assert await accepted_everywhere(key_services, http, old.api_key) == everywhere(True)
    with shifted_clock() as now:
        rotated: contacts_pb2.RotateApiKeyResponse = await stubs.workspaces.RotateApiKey(
            contacts_pb2.RotateApiKeyRequest(key_id=old.key.key_id, overlap=Duration(seconds=3600)),
            metadata=workspace.metadata,
        )
        assert rotated.old_key.HasField("expires_at")
        assert rotated.new_key.name == "shop backend"
        ends = rotated.old_key.expires_at.ToDatetime() - rotated.new_key.created_at.ToDatetime()
        assert timedelta(seconds=3599) < ends <= timedelta(seconds=3601)

        # During the overlap both keys work everywhere.
        assert await accepted_everywhere(key_services, http, old.api_key) == everywhere(True)
        assert await accepted_everywhere(key_services, http, rotated.api_key) == everywhere(True)

        now.offset = timedelta(seconds=3601)  # past the old key's end, caches still warm
        assert await accepted_everywhere(key_services, http, old.api_key) == everywhere(False)
        assert await accepted_everywhere(key_services, http, rotated.api_key) == everywhere(True)


async def test_a_rotation_without_overlap_stops_the_old_key_at_once_everywhere(
    key_services: dict[str, str], http: httpx.AsyncClient, stubs: Stubs, workspace: Workspace
) -> None:
    old = await create_key(stubs, workspace, "leaked")
    assert await accepted_everywhere(key_services, http, old.api_key) == everywhere(True)
    answer = await http.post(
        f"/v1/api-keys/{old.key.key_id}:rotate",
        json={"overlap_seconds": 0},
        headers={"Authorization": f"Bearer {workspace.api_key}"},
    )
    assert answer.status_code == 200, answer.text
    assert await accepted_everywhere(key_services, http, old.api_key) == everywhere(False)
    new_key = answer.json()["api_key"]
    assert await accepted_everywhere(key_services, http, new_key) == everywhere(True)
