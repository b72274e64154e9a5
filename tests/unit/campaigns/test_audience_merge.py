"""The audience's pure rules: the k-way merge of sorted member streams (union, each contact
once, exclusions, batch sizes, constant memory), the deterministic buckets and their shares,
and the wall-clock time of a local-time campaign in a contact's zone."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from nudge.contacts.v1 import contacts_pb2

from services.campaigns.audience import (
    AbSpec,
    AudienceSpec,
    Merged,
    Plan,
    bucket,
    exclusion_of,
    merge_members,
)


class Stream:
    """A sorted stream served in batches, remembering how far it was read."""

    def __init__(self, ids: Sequence[str], batch: int) -> None:
        self.ids = list(ids)
        self.batch = batch
        self.served = 0
        self.closed = False

    async def members(self) -> AsyncIterator[list[tuple[str, str]]]:
        try:
            for start in range(0, len(self.ids), self.batch):
                chunk = self.ids[start : start + self.batch]
                self.served += len(chunk)
                yield [(i, f"{i[:8]}@example.com") for i in chunk]
        finally:
            self.closed = True

    async def ids_only(self) -> AsyncIterator[list[str]]:
        async with contextlib.aclosing(self.members()) as members:
            async for batch in members:
                yield [i for i, _ in batch]


def ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return sorted(str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n))


async def merged(
    sources: list[Stream], exclusions: list[Stream], batch_size: int
) -> list[list[Merged]]:
    return [
        b
        async for b in merge_members(
            [s.members() for s in sources], [e.ids_only() for e in exclusions], batch_size
        )
    ]


async def test_union_has_each_contact_once_in_order_with_its_sources() -> None:
    everyone = ids(3000, 1)
    a = everyone[:2000:1]  # 0..1999
    b = everyone[1500:2500]  # overlaps a on 1500..1999
    c = everyone[::7]  # spread over both and beyond
    batches = await merged([Stream(a, 333), Stream(b, 1000), Stream(c, 50)], [], 400)
    flat = [m for batch in batches for m in batch]
    got = [m[0] for m in flat]
    expected = sorted(set(a) | set(b) | set(c))
    assert got == expected  # once each, ascending
    assert all(len(batch) <= 400 for batch in batches)
    assert all(len(batch) == 400 for batch in batches[:-1])
    mask = {m[0]: m[2] for m in flat}
    for contact_id in expected:
        want = (
            (1 if contact_id in set(a) else 0)
            | (2 if contact_id in set(b) else 0)
            | (4 if contact_id in set(c) else 0)
        )
        assert mask[contact_id] == want, contact_id
    assert all(m[1] == f"{m[0][:8]}@example.com" for m in flat)
    assert not any(m[3] for m in flat)


async def test_members_of_an_exclusion_segment_are_flagged_not_dropped() -> None:
    everyone = ids(2000, 2)
    excluded_one = everyone[100:900:3]
    excluded_two = [*everyone[::11], *ids(50, 99)]  # some are in no source at all
    sources = [Stream(everyone[:1200], 100), Stream(everyone[1000:], 700)]
    batches = await merged(
        sources, [Stream(excluded_one, 64), Stream(sorted(excluded_two), 5)], 1000
    )
    flat = [m for batch in batches for m in batch]
    assert [m[0] for m in flat] == everyone
    flagged = {m[0] for m in flat if m[3]}
    assert flagged == (set(excluded_one) | set(excluded_two)) & set(everyone)


async def test_one_source_and_empty_sources() -> None:
    only = ids(10, 3)
    assert [m[0] for b in await merged([Stream(only, 3)], [], 4) for m in b] == only
    assert await merged([Stream([], 3), Stream([], 5)], [Stream(only, 2)], 4) == []
    assert [m[2] for b in await merged([Stream([], 3), Stream(only, 4)], [], 100) for m in b] == [
        2
    ] * 10


async def test_the_merge_holds_about_one_batch_per_stream() -> None:
    """Constant memory: a stream is not read ahead of the others by more than a batch."""
    everyone = ids(20_000, 4)
    a, b = Stream(everyone[::2], 500), Stream(everyone[1::2], 500)
    seen = 0
    async for batch in merge_members([a.members(), b.members()], [], 500):
        seen += len(batch)
        assert a.served + b.served - seen <= 2 * 500 + 500
    assert seen == 20_000


async def test_an_abandoned_merge_closes_its_streams() -> None:
    a, e = Stream(ids(5000, 5), 100), Stream(ids(5000, 6), 100)
    merge = merge_members([a.members()], [e.ids_only()], 100)
    await anext(merge)
    await merge.aclose()
    assert a.closed and e.closed


def spec(**fields: object) -> AudienceSpec:
    values: dict[str, object] = {
        "workspace_id": str(uuid.uuid4()),
        "campaign_id": uuid.UUID("7a0c9d55-6f57-4a3b-8c2b-3c1f0c3b9a11"),
        "segment_ids": ("all",),
        "exclude_segment_ids": (),
        "tags_any": (),
        "purpose": 2,
        "cap_action": 1,
        "local_time": False,
        "time_zone": "UTC",
        "scheduled_at": None,
        "holdout_percent": 0,
        "ab": None,
    }
    values.update(fields)
    return AudienceSpec(**values)  # type: ignore[arg-type]


def test_buckets_are_deterministic_and_split_the_shares() -> None:
    plan = Plan(
        spec(holdout_percent=10, ab=AbSpec(variants=3, sample_percent=30)), datetime.now(UTC)
    )
    contacts = [str(uuid.UUID(int=random.Random(7).getrandbits(128) + n)) for n in range(100_000)]
    buckets = [plan.bucket(c) for c in contacts]
    assert buckets == [bucket(plan.spec.campaign_id, c) for c in contacts]  # the same rule
    assert buckets == [Plan(plan.spec, datetime.now(UTC)).bucket(c) for c in contacts]
    holdout = sum(plan.is_holdout(b) for b in buckets)
    sample = [
        plan.variant(b) for b in buckets if plan.in_phase(b, "sample") and not plan.is_holdout(b)
    ]
    rest = [b for b in buckets if plan.in_phase(b, "rest")]
    # Binomial shares: 4 standard deviations at n = 100,000 is under 0.8 %.
    assert abs(holdout / 100_000 - 0.10) < 0.008
    assert abs(len(sample) / 100_000 - 0.30) < 0.008
    assert abs(len(rest) / 100_000 - 0.60) < 0.008
    for v in range(3):
        assert abs(sample.count(v) / 100_000 - 0.10) < 0.008
    assert {plan.variant(b) for b in rest} == {-1}
    assert holdout + len(sample) + len(rest) == 100_000  # sample and rest split everyone
    # Another campaign buckets the same contacts independently.
    other = Plan(spec(campaign_id=uuid.uuid4(), holdout_percent=10), datetime.now(UTC))
    both = sum(
        plan.is_holdout(b) and other.is_holdout(other.bucket(c))
        for b, c in zip(buckets, contacts, strict=True)
    )
    assert abs(both / 100_000 - 0.01) < 0.003


def test_without_an_ab_test_everyone_is_variant_0_and_in_the_phase_all() -> None:
    plan = Plan(spec(holdout_percent=5), datetime.now(UTC))
    assert {plan.variant(b) for b in range(10_000)} == {0}
    assert all(plan.in_phase(b, "all") for b in range(10_000))
    assert sum(plan.is_holdout(b) for b in range(10_000)) == 500


def test_without_a_hold_out_or_a_sample_no_bucket_is_needed_as_every_one_decides_alike() -> None:
    """The stream skips the SHA-256 of each contact when :attr:`Plan.bucketed` is False: every
    rule must then answer the same for every bucket, in every phase."""
    ab_without_sample = AbSpec(variants=2, sample_percent=0)
    for fields in ({}, {"ab": ab_without_sample}):
        plan = Plan(spec(**fields), datetime.now(UTC))
        assert not plan.bucketed
        for phase in ("all", "sample", "rest"):
            assert len({plan.in_phase(b, phase) for b in range(10_000)}) == 1
        assert len({(plan.variant(b), plan.is_holdout(b)) for b in range(10_000)}) == 1
    assert Plan(spec(holdout_percent=1), datetime.now(UTC)).bucketed
    assert Plan(spec(ab=AbSpec(variants=2, sample_percent=10)), datetime.now(UTC)).bucketed


def test_local_time_is_the_campaigns_wall_clock_in_the_contacts_zone() -> None:
    # 09:00 in Berlin on 2 June (CEST, UTC+2) is 07:00 UTC.
    at = datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
    plan = Plan(spec(local_time=True, time_zone="Europe/Berlin", scheduled_at=at), at)
    assert plan.local_due("America/New_York") == datetime(2026, 6, 2, 13, 0, tzinfo=UTC)
    assert plan.local_due("Asia/Tokyo") == datetime(2026, 6, 2, 0, 0, tzinfo=UTC)
    assert plan.local_due("") == at  # no zone: the campaign's
    assert plan.local_due("Mars/Olympus") == at  # an unknown zone: the campaign's
    assert plan.local_due("../../etc/passwd") == at
    assert plan.local_due("Europe/Berlin") == at


def test_eligibility_reasons_become_excluded_count_reasons() -> None:
    answer = contacts_pb2.CheckEligibilityResponse
    assert exclusion_of(None) == "not_found"
    assert exclusion_of(answer(eligible=False, reason="suppressed:hard_bounce")) == "suppressed"
    assert exclusion_of(answer(eligible=False, reason="no_consent:targeted_messages")) == (
        "no_consent"
    )
    assert exclusion_of(answer(eligible=False, reason="consent_withdrawn:x")) == (
        "consent_withdrawn"
    )
    assert exclusion_of(answer(eligible=False, reason="consent_pending:x")) == "consent_pending"
    assert exclusion_of(answer(eligible=True, email="")) == "no_email"
    assert exclusion_of(answer(eligible=True, email="a@example.com")) is None
