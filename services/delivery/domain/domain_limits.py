"""How fast mail for one recipient domain may be handed over: at most so many connections
(sends in flight) and so many messages a second, per mailbox provider.

Mailbox providers throttle a sender that opens too many connections or sends too fast
(Gmail's 421 4.7.28, Outlook's 451 4.7.650 "temporarily rate limited"), and a sender that
keeps being throttled loses reputation. So the rate is ours to keep, per provider: the
domains of one provider (gmail.com and googlemail.com; outlook.com, hotmail.com, live.com
and msn.com...) share one limit, every other domain has a limit of its own.

With one relay (``SMTP_URL``) every connection goes to that relay, which delivers onwards:
these limits then shape how fast we hand a provider's mail to the relay, which keeps its own
queue from filling with mail the provider would defer.

Configuration (``DELIVERY_DOMAIN_LIMITS``, JSON): a mapping whose keys are a provider's
name (``google``, ``microsoft``, ``yahoo``, ``apple``), a domain, or ``default`` (every
domain not named otherwise), each to ``{"max_connections": n, "per_second": r}``; what is
not given keeps the defaults below. Pure: the clock is given, nothing sleeps here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DomainLimit:
    max_connections: int
    per_second: float

    def __post_init__(self) -> None:
        if not (isinstance(self.max_connections, int) and 1 <= self.max_connections <= 1000):
            raise ValueError(f"max_connections must be 1-1000, got {self.max_connections!r}")
        if not (0 < self.per_second <= 100_000):
            raise ValueError(
                f"per_second must be above 0 and at most 100000, got {self.per_second!r}"
            )

    @property
    def burst(self) -> int:
        """How many may go at once after a quiet spell: a tenth of a second's worth."""
        return max(1, math.floor(self.per_second / 10))


# Conservative for a sender of average reputation; a sender that warms up its IPs raises them.
PROVIDERS: Mapping[str, tuple[tuple[str, ...], DomainLimit]] = {
    "google": (("gmail.com", "googlemail.com"), DomainLimit(20, 100)),
    "microsoft": (
        (
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "hotmail.co.uk",
            "hotmail.fr",
            "outlook.fr",
            "live.fr",
            "live.co.uk",
        ),
        DomainLimit(10, 50),
    ),
    "yahoo": (
        ("yahoo.com", "ymail.com", "rocketmail.com", "yahoo.co.uk", "yahoo.fr", "aol.com"),
        DomainLimit(10, 50),
    ),
    "apple": (("icloud.com", "me.com", "mac.com"), DomainLimit(10, 50)),
}
DEFAULT_LIMIT = DomainLimit(5, 20)
DEFAULT = "default"


@dataclass(frozen=True)
class DomainLimits:
    """Which limit a recipient domain falls under, and the key of the limiter it shares."""

    by_domain: Mapping[str, tuple[str, DomainLimit]] = field(default_factory=dict)
    default: DomainLimit = DEFAULT_LIMIT

    def for_domain(self, domain: str) -> tuple[str, DomainLimit]:
        """``(key, limit)``: domains with the same key share one limiter."""
        domain = domain.strip().lower().rstrip(".")
        return self.by_domain.get(domain) or (domain, self.default)

    def for_recipient(self, address: str) -> tuple[str, DomainLimit]:
        return self.for_domain(address.rpartition("@")[2])

    @classmethod
    def from_mapping(cls, config: Mapping[str, Mapping[str, float]]) -> DomainLimits:
        """The defaults with ``config``'s overrides (see the module's docstring); a bad key or
        value raises ValueError naming it, so a typo fails the start-up, not the sending."""
        by_domain: dict[str, tuple[str, DomainLimit]] = {}
        for provider, (domains, limit) in PROVIDERS.items():
            limit = _limit(provider, config.get(provider), limit)
            by_domain.update((d, (provider, limit)) for d in domains)
        default = _limit(DEFAULT, config.get(DEFAULT), DEFAULT_LIMIT)
        for key, value in config.items():
            if key in PROVIDERS or key == DEFAULT:
                continue
            domain = key.strip().lower().rstrip(".")
            if "." not in domain or "@" in domain or " " in domain:
                raise ValueError(f"domain limits: {key!r} is not a provider nor a domain")
            # A domain named on its own gets a limiter of its own, even if a provider's.
            by_domain[domain] = (domain, _limit(key, value, default))
        return cls(by_domain=by_domain, default=default)


def _limit(key: str, given: Mapping[str, float] | None, base: DomainLimit) -> DomainLimit:
    if given is None:
        return base
    unknown = set(given) - {"max_connections", "per_second"}
    if unknown:
        raise ValueError(f"domain limits: {key}: unknown settings {sorted(unknown)}")
    connections = given.get("max_connections", base.max_connections)
    if isinstance(connections, float) and connections.is_integer():
        connections = int(connections)
    try:
        return DomainLimit(
            max_connections=connections,  # type: ignore[arg-type]  # checked by DomainLimit
            per_second=float(given.get("per_second", base.per_second)),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"domain limits: {key}: {err}") from err


class RateSchedule:
    """When each next message of one limiter may go: the generic cell rate algorithm, as a
    reservation. :meth:`reserve` books the next slot and answers how long to wait for it, so
    waiters queue in the order they asked and none of them polls.

    A reservation whose waiter is cancelled stays booked: the rate errs on the slow side.
    """

    def __init__(self, limit: DomainLimit) -> None:
        self._interval = 1.0 / limit.per_second
        self._tolerance = (limit.burst - 1) * self._interval
        self._theoretical_arrival = -math.inf

    def reserve(self, now: float) -> float:
        """Book the next slot at or after ``now`` (seconds, monotonic): the delay until it."""
        arrival = max(self._theoretical_arrival, now)
        go_at = max(now, arrival - self._tolerance)
        self._theoretical_arrival = arrival + self._interval
        return go_at - now
