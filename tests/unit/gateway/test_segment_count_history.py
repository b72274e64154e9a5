"""``GET /v1/segments/{id}/count`` answers the count segmentation kept about 30 days ago
(the console's Overview shows the change against it): the gateway's mapping of
CountSegmentResponse's ``earlier_count`` and ``earlier_day``, which a count of 0 kept must
survive (0 is a count, not "none kept")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nudge.segmentation.v1 import segmentation_pb2

from tests.unit.gateway.conftest import AUTH, Gateway


@pytest.mark.parametrize("kept", [0, 7])
async def test_the_count_kept_30_days_ago_is_answered_with_its_day(
    gateway: Gateway, kept: int
) -> None:
    answer = segmentation_pb2.CountSegmentResponse(count=3, earlier_count=kept)
    answer.earlier_day.FromDatetime(datetime(2026, 10, 31, tzinfo=UTC))
    gateway.segments.answers["CountSegment"] = answer
    got = await gateway.http.get("/v1/segments/vip/count", headers=AUTH)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["count_30_days_ago"], body["count_30_days_ago_day"]) == (kept, "2026-10-31")
