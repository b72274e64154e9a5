"""The members of a campaign's sources as segmentation streams them: one ``StreamMembers``
call per chosen segment (or tag rule), each in ascending contact id, read a batch at a time.

The audience's merge (services/campaigns/audience.py) consumes these streams side by side, so
each yields plain ``(contact id, e-mail)`` tuples: cheaper to build and compare than messages
or uuids, and a contact id's text orders as its uuid does (lower-case hex, fixed length)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime

import grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.auth import internal_metadata
from services.common.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

# The most segmentation sends in one message (StreamMembersRequest.batch_size).
STREAM_BATCH = 5000

Member = tuple[str, str]  # (contact id, e-mail)

_NOT_ANSWERING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def tags_rule(tags: Sequence[str]) -> str:
    """The segmentation rule (JSON text) of "has any of these tags"
    (services/segmentation/domain/rules.py: ``{"tag": ...}`` nodes under ``any``)."""
    if len(tags) == 1:
        return json.dumps({"tag": tags[0]})
    return json.dumps({"any": [{"tag": t} for t in tags]})


def segment_target(segment_id: str) -> segmentation_pb2.SegmentTarget:
    return segmentation_pb2.SegmentTarget(segment_id=segment_id)


def rule_target(rule: str) -> segmentation_pb2.SegmentTarget:
    return segmentation_pb2.SegmentTarget(rule=rule)


class MemberStreams:
    """Opens member streams of one workspace's sources, all at one ``as_of``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        internal_token: str,
        workspace_id: str,
        as_of: datetime,
        *,
        batch_size: int = STREAM_BATCH,
    ) -> None:
        self._stub = segmentation_pb2_grpc.SegmentServiceStub(channel)
        self._metadata = internal_metadata(internal_token, workspace_id)
        self._as_of = as_of
        self._batch_size = batch_size

    async def members(
        self, target: segmentation_pb2.SegmentTarget, after: str | None, label: str
    ) -> AsyncGenerator[list[Member], None]:
        """The target's members after ``after``, a batch at a time (ascending contact id).

        A segment deleted since the campaign was written (NOT_FOUND) or a tag rule
        segmentation refuses is the campaign's problem, not a retry's: FAILED_PRECONDITION
        naming the source. Segmentation not answering is UNAVAILABLE (worth a retry)."""
        request = segmentation_pb2.StreamMembersRequest(
            target=target, after_contact_id=after or "", batch_size=self._batch_size
        )
        request.as_of.FromDatetime(self._as_of)
        call = self._stub.StreamMembers(request, metadata=self._metadata)
        try:
            async for answer in call:
                yield [(m.contact_id, m.email) for m in answer.members]
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code in _NOT_ANSWERING:
                log.warning("segmentation answered %s for %s: %s", code.name, label, err.details())
                raise Unavailable(f"cannot read the audience now: {code.name}") from err
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise FailedPrecondition(
                    f"the audience's source {label} cannot be read: {err.details()}"
                ) from err
            raise
        finally:
            call.cancel()

    async def ids(
        self, target: segmentation_pb2.SegmentTarget, after: str | None, label: str
    ) -> AsyncIterator[list[str]]:
        """Only the contact ids of :meth:`members` (exclusion segments)."""
        async with contextlib.aclosing(self.members(target, after, label)) as members:
            async for batch in members:
                yield [contact_id for contact_id, _ in batch]
