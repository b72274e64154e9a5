"""A campaign's audience as a stream: every contact of its chosen segments and tags, once, in
ascending contact id, each with what the fan-out must do with it.

The stream is what both the fan-out and the audience preview (PreviewAudience) read, so that
the numbers a manager sees before sending are the ones the send applies.

How a batch is made, in order:

1. **Sources.** One segmentation ``StreamMembers`` per chosen segment and one for the tags
   (a rule ``{"any": [{"tag": ...}, ...]}``), all at the same ``as_of``, merged by
   :func:`merge_members` (a k-way merge of sorted streams holding one batch per stream:
   constant memory whatever the audience). Each contact comes once, with the set of sources
   it is in; members of ``exclude_segment_ids`` (streamed and walked beside them) are
   excluded ``excluded_segment``.
2. **Phase.** Every (campaign, contact) has a deterministic bucket 0-9,999 (:func:`bucket`):
   the first ``holdout_percent`` hundreds are the hold-out, the next ``sample_percent``
   hundreds the A/B sample (variant = bucket mod variants), the rest the rest. A phase keeps
   only its buckets before anything is asked, so a sample send checks only the sample.
3. **Eligibility.** Contacts' ``CheckEligibilityBatch`` for the campaign's purpose, 1,000
   a call, a batch's calls in flight together, and several batches in flight while the merge
   goes on (:data:`IN_FLIGHT_CHECKS`). Its reasons become ExcludedCount reasons.
4. **Frequency cap.** One query per batch on ``recipients``: contacts mailed
   ``frequency_cap_messages`` times by other campaigns within ``frequency_cap_days`` are
   excluded ``frequency_cap`` (SKIP) or due when the cap lets them through (DEFER).
5. **Hold-out** of whoever is left, then **local time**: the campaign's wall-clock time in
   the contact's own zone.

Each contact is excluded once, under the first reason in that order. The same ``as_of``
gives the same members, and a stream resumed ``after`` a contact continues where it stopped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2
from nudge.contacts.v1 import contacts_pb2

from services.campaigns.adapters import eligibility as elig
from services.campaigns.adapters import members as mem
from services.campaigns.ports import Ports
from services.common import clock
from services.common.errors import NotFound
from services.common.events import deterministic_id

log = logging.getLogger(__name__)

# "all": a campaign without an A/B test (the hold-out, if any, comes back excluded).
# "sample": an A/B test's first send: the sample's contacts (variants 0..n-1) and the
#   hold-out; the rest is not yielded. "rest": the contacts of neither (variant -1).
Phase = Literal["all", "sample", "rest"]

BUCKETS = 10_000
TAGS_SOURCE = "tags"
# Eligibility checks asked at once across batches: enough calls in flight that the stream
# is bound by contacts' throughput rather than by a call's latency, few enough not to hog
# contacts' pool.
IN_FLIGHT_CHECKS = 8_000
# The preview's batches: the most segmentation sends in one message.
PREVIEW_BATCH = mem.STREAM_BATCH

# ExcludedCount.reason, in the order a contact's first reason is taken (contacts' own reasons,
# "no_consent", "consent_withdrawn", "consent_pending", "suppressed", come between
# not_found and frequency_cap, by the head of their "reason:detail").
EXCLUDED_SEGMENT = "excluded_segment"
NOT_FOUND = "not_found"
NO_EMAIL = "no_email"
FREQUENCY_CAP = "frequency_cap"
HOLDOUT = "holdout"


def message_id(campaign_id: uuid.UUID | str, contact_id: uuid.UUID | str) -> str:
    """The one message a contact gets from a campaign, whatever the phase or the retry:
    delivery claims it once, so a replayed fan-out never mails anyone twice."""
    return deterministic_id("campaign", str(campaign_id), str(contact_id))


@dataclass(frozen=True)
class AbSpec:
    variants: int  # 2-5
    sample_percent: int  # the whole sample across variants


@dataclass(frozen=True)
class AudienceSpec:
    """What the stream needs of a campaign (read from its row)."""

    workspace_id: str
    campaign_id: uuid.UUID
    segment_ids: tuple[str, ...]
    exclude_segment_ids: tuple[str, ...]
    tags_any: tuple[str, ...]
    purpose: int  # nudge.contacts.v1.ConsentPurpose
    cap_action: int  # nudge.campaigns.v1.CapAction
    local_time: bool
    time_zone: str  # IANA, the campaign's (or the workspace's setting)
    scheduled_at: datetime | None  # the wall-clock moment for local_time campaigns
    holdout_percent: int
    ab: AbSpec | None


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, about
# six times the cost of plain slots, once per contact of a million-contact audience. Treat it
# as immutable all the same (hashable by value, as it was frozen).
@dataclass(slots=True, unsafe_hash=True)
class Recipient:
    # The id's text as segmentation streams it (lower-case, hyphenated: str() of its uuid),
    # kept as text to the fan-out's insert and records, which need nothing else.
    contact_id: str
    email: str
    # ExcludedCount.reason ("no_consent", "suppressed", "frequency_cap", "holdout", ...);
    # None: to be mailed.
    excluded: str | None
    variant: int  # 0..n-1 (0 without an A/B test), -1 in the "rest" phase
    due_at: datetime | None  # not before this (cap deferral, local time); None: now
    # Contacts' fields (email above too): only a local-time campaign reads one (the zone),
    # so only its stream asks contacts for every contact's; otherwise contacts answers only
    # the exceptions (audience._Decider) and a mailed contact's fields are empty.
    first_name: str = ""
    last_name: str = ""
    locale: str = ""
    time_zone: str = ""
    # Which of the campaign's sources the contact is in: bit i for sources(spec)[i].
    sources: int = 0
    # Has consent for the purpose; False for a contact mailed only because the workspace
    # does not require consent (the preview's not_consented).
    consented: bool = True


def sources(spec: AudienceSpec) -> list[str]:
    """The audience's sources in bit order of :attr:`Recipient.sources`: the segments as
    chosen, then "tags" when there are any."""
    return [*spec.segment_ids, *([TAGS_SOURCE] if spec.tags_any else [])]


# ---------------------------------------------------------------- the merge (pure)

# A merged member: (contact id, e-mail, bit mask of its sources, in an exclusion segment).
Merged = tuple[str, str, int, bool]
_first = itemgetter(0)


class _Cursor:
    """One sorted stream of batches, read a batch at a time."""

    def __init__(self, stream: AsyncIterator[Sequence[mem.Member]], bit: int) -> None:
        self.stream = stream
        self.bit = bit
        self.buf: Sequence[mem.Member] = ()
        self.pos = 0
        self.done = False

    async def fill(self) -> bool:
        """Has an unread member (reads the next non-empty batch if needed)."""
        while self.pos >= len(self.buf):
            if self.done:
                return False
            try:
                self.buf = await anext(self.stream)
            except StopAsyncIteration:
                self.done = True
                self.buf = ()
            self.pos = 0
        return True

    def take_upto(self, horizon: str) -> Sequence[mem.Member]:
        end = bisect.bisect_right(self.buf, horizon, lo=self.pos, key=_first)
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk


class _IdCursor:
    """A sorted stream of contact ids (an exclusion segment), walked beside the merge."""

    def __init__(self, stream: AsyncIterator[Sequence[str]]) -> None:
        self.stream = stream
        self.buf: Sequence[str] = ()
        self.pos = 0
        self.done = False

    async def mark(self, ids: Sequence[str], flags: list[bool]) -> None:
        """Sets ``flags[i]`` for each of the ascending ``ids`` in the stream; reads the stream
        only as far as the last of them (what lies before an id is never needed again)."""
        i, n = 0, len(ids)
        while i < n:
            if self.pos >= len(self.buf):
                if self.done:
                    return
                try:
                    self.buf = await anext(self.stream)
                except StopAsyncIteration:
                    self.done = True
                    self.buf = ()
                self.pos = 0
                continue
            buf, pos, end = self.buf, self.pos, len(self.buf)
            while i < n:
                pos = bisect.bisect_left(buf, ids[i], pos)
                if pos == end:
                    break  # the next batch decides ids[i]
                if buf[pos] == ids[i]:
                    flags[i] = True
                i += 1
            self.pos = pos


async def merge_members(
    streams: Sequence[AsyncIterator[Sequence[mem.Member]]],
    exclusions: Sequence[AsyncIterator[Sequence[str]]],
    batch_size: int,
) -> AsyncGenerator[list[Merged], None]:
    """The union of ``streams`` (each strictly ascending by contact id), each contact once
    with the bit mask of the streams it is in (bit i: ``streams[i]``), flagged when it is in
    any of ``exclusions``; ascending, in batches of at most ``batch_size``.

    Holds one batch per stream: everything up to the smallest "last id read" of the live
    streams can be emitted, since no stream can still bring a smaller id. The streams are
    closed when the merge ends or is abandoned."""
    cursors = [_Cursor(s, 1 << i) for i, s in enumerate(streams)]
    excluded = [_IdCursor(e) for e in exclusions]
    out: list[Merged] = []
    try:
        while True:
            live = [c for c in cursors if await c.fill()]
            if not live:
                break
            horizon = min(c.buf[-1][0] for c in live)
            ids: list[str]
            if len(live) == 1:
                only = live[0]
                bit = only.bit
                chunk = only.take_upto(horizon)
                ids = [m[0] for m in chunk]
                emails = [m[1] for m in chunk]
                masks = [bit] * len(chunk)
            else:
                by_id: dict[str, int] = {}
                email_of: dict[str, str] = {}
                for c in live:
                    bit = c.bit
                    for contact_id, email in c.take_upto(horizon):
                        seen = by_id.get(contact_id)
                        if seen is None:
                            by_id[contact_id] = bit
                            email_of[contact_id] = email
                        else:
                            by_id[contact_id] = seen | bit
                ids = sorted(by_id)
                emails = [email_of[i] for i in ids]
                masks = [by_id[i] for i in ids]
            flags = [False] * len(ids)
            for e in excluded:
                await e.mark(ids, flags)
            out.extend(zip(ids, emails, masks, flags, strict=True))
            if len(out) >= batch_size:
                full = len(out) - len(out) % batch_size
                for start in range(0, full, batch_size):
                    yield out[start : start + batch_size]
                out = out[full:]
        if out:
            yield out
    finally:
        for stream in [*streams, *exclusions]:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


# ---------------------------------------------------------------- per contact rules (pure)


def bucket(campaign_id: uuid.UUID | str, contact_id: uuid.UUID | str) -> int:
    """The (campaign, contact)'s bucket, 0-9,999: the first 8 bytes of the SHA-256 of both
    ids. The same on every run and phase, independent between campaigns."""
    digest = hashlib.sha256(f"{campaign_id}/{contact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def exclusion_of(answer: elig.Answer) -> str | None:
    """The ExcludedCount reason of contacts' eligibility answer; None: may be mailed."""
    if answer is None:
        return NOT_FOUND
    if not answer.eligible:
        head = answer.reason.partition(":")[0]
        return head or "not_eligible"
    if not answer.email:
        return NO_EMAIL
    return None


def _zone(name: str) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


class Plan:
    """The per-contact rules of one campaign's audience (buckets, variants, local time), with
    what they need precomputed once."""

    def __init__(self, spec: AudienceSpec, as_of: datetime) -> None:
        self.spec = spec
        self.holdout_end = spec.holdout_percent * 100
        self.sample_end = self.holdout_end + (spec.ab.sample_percent * 100 if spec.ab else 0)
        self.variants = spec.ab.variants if spec.ab else 0
        # Without a hold-out or an A/B sample every rule below gives all buckets the same
        # answer, so no contact's SHA-256 needs computing.
        self.bucketed = self.sample_end > 0
        self._prefix = f"{spec.campaign_id}/".encode()
        self.zone = _zone(spec.time_zone) or ZoneInfo("UTC")
        moment = spec.scheduled_at or as_of
        self.wall = moment.astimezone(self.zone).replace(tzinfo=None)
        self._due: dict[str, datetime] = {}

    def bucket(self, contact_id: str) -> int:
        digest = hashlib.sha256(self._prefix + contact_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def in_phase(self, bucket: int, phase: Phase) -> bool:
        if phase == "sample":
            return bucket < self.sample_end
        if phase == "rest":
            return bucket >= self.sample_end
        return True

    def variant(self, bucket: int) -> int:
        if not self.variants:
            return 0
        if bucket < self.holdout_end:
            return 0
        if bucket < self.sample_end:
            return bucket % self.variants
        return -1

    def is_holdout(self, bucket: int) -> bool:
        return bucket < self.holdout_end

    def local_due(self, contact_zone: str) -> datetime:
        """The campaign's wall-clock time in the contact's zone (the campaign's own when the
        contact has none or an unknown one), as an instant in UTC."""
        due = self._due.get(contact_zone)
        if due is None:
            zone = _zone(contact_zone) or self.zone
            due = self.wall.replace(tzinfo=zone).astimezone(UTC)
            self._due[contact_zone] = due
        return due


def spec_from_row(row: asyncpg.Record, default_time_zone: str) -> AudienceSpec:
    """The audience of a campaign row (adapters/eligibility.py campaign_audience_row)."""
    ab = elig.ab_test_of(row["ab_test"])
    subjects = ab.get("subjects") if ab else None
    sample = ab.get("sample_percent") if ab else None
    ab_spec = (
        AbSpec(variants=len(subjects), sample_percent=sample)
        if isinstance(subjects, list) and len(subjects) >= 2 and isinstance(sample, int)
        else None
    )
    return AudienceSpec(
        workspace_id=str(row["workspace_id"]),
        campaign_id=row["id"],
        segment_ids=tuple(row["segment_ids"]),
        exclude_segment_ids=tuple(row["exclude_segment_ids"]),
        tags_any=tuple(row["tags_any"]),
        purpose=row["purpose"],
        cap_action=row["cap_action"],
        local_time=row["local_time"],
        time_zone=row["time_zone"] or default_time_zone,
        scheduled_at=row["scheduled_at"],
        holdout_percent=row["holdout_percent"],
        ab=ab_spec,
    )


async def load_spec(ports: Ports, workspace_id: str, campaign_id: uuid.UUID) -> AudienceSpec | None:
    """The audience of one of the workspace's campaigns (None: no such campaign here); a
    campaign without its own time zone takes the workspace's campaign setting."""
    async with ports.pool.acquire() as conn:
        row = await elig.campaign_audience_row(conn, workspace_id, campaign_id)
        if row is None:
            return None
        settings = await elig.cap_settings(conn, workspace_id)
    return spec_from_row(row, settings.time_zone)


# ---------------------------------------------------------------- the stream


async def stream_recipients(
    ports: Ports,
    spec: AudienceSpec,
    *,
    phase: Phase,
    as_of: datetime,
    after: uuid.UUID | None = None,
    batch_size: int = 1000,
) -> AsyncIterator[list[Recipient]]:
    """Every contact of the audience after ``after``, once, in ascending contact id, in
    batches of at most ``batch_size``; excluded contacts included with their reason. The same
    ``as_of`` gives the same audience, so a resumed fan-out continues the stream it began."""
    token = ports.settings.internal_token
    streams = mem.MemberStreams(ports.segmentation, token, spec.workspace_id, as_of)
    start = str(after) if after else None
    member_streams = [
        streams.members(mem.segment_target(s), start, f"segment {s!r}") for s in spec.segment_ids
    ]
    if spec.tags_any:
        member_streams.append(
            streams.members(mem.rule_target(mem.tags_rule(spec.tags_any)), start, "tags")
        )
    exclusion_streams = [
        streams.ids(mem.segment_target(s), start, f"excluded segment {s!r}")
        for s in spec.exclude_segment_ids
    ]
    async with ports.pool.acquire() as conn:
        cap = await elig.cap_settings(conn, spec.workspace_id)
    decide = _Decider(ports, spec, Plan(spec, as_of), cap)
    in_flight = max(2, -(-IN_FLIGHT_CHECKS // batch_size))
    pending: deque[asyncio.Task[list[Recipient]]] = deque()
    chosen: list[tuple[Merged, int]] = []
    merged = merge_members(member_streams, exclusion_streams, batch_size)
    plan = decide.plan
    try:
        async for batch in merged:
            if plan.bucketed:
                for m in batch:
                    b = plan.bucket(m[0])
                    if plan.in_phase(b, phase):
                        chosen.append((m, b))
            else:
                chosen.extend([(m, 0) for m in batch])  # every bucket decides alike
            while len(chosen) >= batch_size:
                pending.append(asyncio.create_task(decide(chosen[:batch_size])))
                chosen = chosen[batch_size:]
                if len(pending) >= in_flight:
                    yield await pending.popleft()
        if chosen:
            pending.append(asyncio.create_task(decide(chosen)))
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await merged.aclose()


# A contact that contacts leaves out of its answers in exceptions mode is found, eligible,
# consenting and addressed. Its other fields stay empty (the fan-out reads none of them).
_MAILABLE = contacts_pb2.CheckEligibilityResponse(eligible=True, consented=True)


class _Decider:
    """What happens to each contact of a batch: eligibility, cap, hold-out, variant, due."""

    def __init__(self, ports: Ports, spec: AudienceSpec, plan: Plan, cap: elig.CapSettings) -> None:
        self.ports = ports
        self.spec = spec
        self.plan = plan
        self.cap = cap
        self.defer = spec.cap_action == campaigns_pb2.CAP_ACTION_DEFER
        self.eligibility = elig.Eligibility(
            ports.contacts, ports.settings.internal_token, spec.workspace_id, spec.purpose
        )

    async def __call__(self, batch: list[tuple[Merged, int]]) -> list[Recipient]:
        spec, plan = self.spec, self.plan
        to_check = [m[0] for m, _ in batch if not m[3]]
        # Without local time no contact field is read: contacts answers only the exceptions.
        lean = not spec.local_time
        exceptions: dict[str, elig.Answer] = {}
        answers: Iterator[elig.Answer] = iter(())
        if to_check and lean:
            exceptions = await self.eligibility.exceptions(to_check)
        elif to_check:
            answers = iter(await self.eligibility.check(to_check))
        decided: list[tuple[Merged, int, elig.Answer, str | None]] = []
        mailable: list[str] = []
        for m, b in batch:
            if m[3]:
                decided.append((m, b, None, EXCLUDED_SEGMENT))
                continue
            answer = exceptions.get(m[0], _MAILABLE) if lean else next(answers)
            reason = None if answer is _MAILABLE else exclusion_of(answer)
            decided.append((m, b, answer, reason))
            if reason is None:
                mailable.append(m[0])
        now = clock.now()
        held: dict[str, datetime] = {}
        if mailable:
            async with self.ports.pool.acquire() as conn:
                held = await elig.capped(
                    conn, spec.workspace_id, spec.campaign_id, mailable, self.cap, now
                )
        out: list[Recipient] = []
        local_time = spec.local_time
        for (contact_id, email, mask, _), b, answer, reason in decided:
            due: datetime | None = None
            if reason is None:
                until = held.get(contact_id)
                if until is not None:
                    if self.defer:
                        due = until
                    else:
                        reason = FREQUENCY_CAP
            if reason is None and b < plan.holdout_end:
                reason = HOLDOUT
            if reason is not None or answer is None:
                # Left out: what the fan-out records and the preview counts, no more.
                out.append(
                    Recipient(
                        contact_id,
                        email,
                        reason,
                        plan.variant(b),
                        None,
                        "",
                        "",
                        "",
                        "",
                        mask,
                        answer.consented if answer is not None else False,
                    )
                )
                continue
            zone = answer.time_zone
            if local_time:
                local = plan.local_due(zone)
                if due is None or local > due:
                    due = local
            if due is not None and due <= now:
                due = None
            out.append(
                Recipient(  # positional: the fields' order (cheaper than keywords)
                    contact_id,
                    answer.email,
                    None,
                    plan.variant(b),
                    due,
                    answer.first_name,
                    answer.last_name,
                    answer.locale,
                    zone,
                    mask,
                    answer.consented,
                )
            )
        return out


# ---------------------------------------------------------------- the preview

# The order excluded counts are listed in: the order a contact's first reason is taken.
REASON_ORDER = (
    EXCLUDED_SEGMENT,
    NOT_FOUND,
    "suppressed",
    "consent_withdrawn",
    "consent_pending",
    "no_consent",
    NO_EMAIL,
    FREQUENCY_CAP,
    HOLDOUT,
)


@dataclass
class AudienceCounts:
    """What the preview counts while the stream goes by (each contact once)."""

    sources: list[str]
    members: int = 0
    eligible: int = 0
    not_consented: int = 0

    def __post_init__(self) -> None:
        self.excluded: dict[str, int] = {}
        self.in_source = [0] * len(self.sources)
        self.also_elsewhere = [0] * len(self.sources)

    def add(self, batch: Sequence[Recipient]) -> None:
        bits = [(i, 1 << i) for i in range(len(self.sources))]
        excluded = self.excluded
        for r in batch:
            mask = r.sources
            for i, bit in bits:
                if mask & bit:
                    self.in_source[i] += 1
                    if mask != bit:
                        self.also_elsewhere[i] += 1
            if r.excluded is None:
                self.eligible += 1
                if not r.consented:
                    self.not_consented += 1
            else:
                excluded[r.excluded] = excluded.get(r.excluded, 0) + 1
        self.members += len(batch)

    def excluded_in_order(self) -> list[tuple[str, int]]:
        rank = {reason: n for n, reason in enumerate(REASON_ORDER)}
        return sorted(
            self.excluded.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])
        )


async def preview_audience(
    ports: Ports, workspace_id: str, campaign_id: str
) -> campaigns_pb2.AudiencePreview:
    """The campaign's audience as the send would see it now (the stream in phase "all",
    nothing written): members, eligible, excluded by first reason, the share of each source,
    the consent confirmation the send will need and whether sending is suspended.

    Another workspace's campaign, or an id that is none, is NOT_FOUND."""
    try:
        key = uuid.UUID(campaign_id)
    except ValueError as err:
        raise NotFound("campaign not found") from err
    spec = await load_spec(ports, workspace_id, key)
    if spec is None:
        raise NotFound("campaign not found")
    token = ports.settings.internal_token
    as_of = clock.now()
    # The workspace's consent rule and the guard are asked while the stream runs.
    consent_rule = asyncio.create_task(elig.only_consented(ports.contacts, token, workspace_id))
    sending = asyncio.create_task(elig.sending_status(ports.delivery, token, workspace_id))
    try:
        counts = AudienceCounts(sources(spec))
        async for batch in stream_recipients(
            ports, spec, phase="all", as_of=as_of, batch_size=PREVIEW_BATCH
        ):
            counts.add(batch)
        only_consented = await consent_rule
        status = await sending
    finally:
        for task in (consent_rule, sending):
            task.cancel()
        await asyncio.gather(consent_rule, sending, return_exceptions=True)
    not_consented = 0 if only_consented else counts.not_consented
    preview = campaigns_pb2.AudiencePreview(
        members=counts.members,
        eligible=counts.eligible,
        excluded=[
            campaigns_pb2.ExcludedCount(reason=reason, count=n)
            for reason, n in counts.excluded_in_order()
        ],
        sources=[
            campaigns_pb2.SegmentShare(source=source, members=n, also_in_other_sources=also)
            for source, n, also in zip(
                counts.sources, counts.in_source, counts.also_elsewhere, strict=True
            )
        ],
        only_consented=only_consented,
        not_consented=not_consented,
        confirmation_required=not only_consented and not_consented > 0,
        sending_suspended=status.suspended,
        suspended_reason=status.reason,
    )
    preview.as_of.FromDatetime(as_of)
    return preview
