"""How campaigns reads segmentation's answers: a segmentation that does not answer is
Unavailable (the caller may retry); any other failure is not the caller's and propagates."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.campaigns.adapters.segmentation import SegmentCatalogue
from services.common.auth import WORKSPACE_HEADER
from services.common.errors import Unavailable
from tests.support import free_port
from tests.unit.campaigns.segmentation_standin import StandInSegmentation, serving

WS = "00000000-0000-4000-8000-000000000001"
TOKEN = "test-internal-token"


@pytest.fixture
async def standin() -> AsyncIterator[tuple[StandInSegmentation, SegmentCatalogue]]:
    segmentation = StandInSegmentation()
    async with serving(segmentation) as address, grpc.aio.insecure_channel(address) as ch:
        yield segmentation, SegmentCatalogue(ch, TOKEN, timeout=0.5)


async def test_the_workspaces_segment_ids_asked_on_its_behalf(
    standin: tuple[StandInSegmentation, SegmentCatalogue],
) -> None:
    segmentation, catalogue = standin
    assert await catalogue.segment_ids(WS) == {"vip", "loyal"}
    [call] = segmentation.calls
    assert call["authorization"] == f"Internal {TOKEN}"
    assert call[WORKSPACE_HEADER] == WS


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_no_answer_is_unavailable(
    standin: tuple[StandInSegmentation, SegmentCatalogue], code: grpc.StatusCode
) -> None:
    segmentation, catalogue = standin
    segmentation.fail_with = code
    with pytest.raises(Unavailable, match=code.name):
        await catalogue.segment_ids(WS)


async def test_an_answer_too_late_is_unavailable(
    standin: tuple[StandInSegmentation, SegmentCatalogue],
) -> None:
    segmentation, catalogue = standin
    segmentation.delay = 2.0
    with pytest.raises(Unavailable, match="DEADLINE_EXCEEDED"):
        await catalogue.segment_ids(WS)


async def test_nobody_listening_is_unavailable() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as ch:
        with pytest.raises(Unavailable, match="UNAVAILABLE"):
            await SegmentCatalogue(ch, TOKEN, timeout=2).segment_ids(WS)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
async def test_any_other_failure_propagates_as_it_is(
    standin: tuple[StandInSegmentation, SegmentCatalogue], code: grpc.StatusCode
) -> None:
    segmentation, catalogue = standin
    segmentation.fail_with = code
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await catalogue.segment_ids(WS)
    assert err.value.code() == code
