"""Which opens and clicks a machine made: mail-privacy proxies and security scanners fetch
every image (and often follow every link) of a mail, so their hits say nothing about the
reader. They are flagged (``machine_open`` / ``machine_click`` with a ``machine_reason``) and
counted apart, not dropped. The rules, in the order they are tried (docs/tracking.md):

1. ``apple_mpp``: Apple Mail Privacy Protection's prefetch, which sends the bare user agent
   ``Mozilla/5.0``, or any hit from Apple's own network (17.0.0.0/8);
2. ``prefetch_proxy``: the image proxies of Gmail and Yahoo (user agent);
3. ``scanner_user_agent``: link scanners (Outlook Safe Links, Barracuda, Mimecast,
   Proofpoint...), headless browsers, HTTP libraries, crawlers, and no user agent at all;
4. ``scanner_network``: a client address in a known scanner or proxy network
   (:data:`KNOWN_NETWORKS`, plus the operator's ``TRACKING_MACHINE_NETWORKS``);
5. ``too_soon``: within ``too_soon_s`` of the mail's issue time (signed into the link): the
   mail has barely reached the mailbox, no reader has seen it yet;
6. ``link_burst`` (clicks, decided after the request with Redis, see
   services/tracking/adapters/bursts.py): several distinct links of one mail clicked within a
   few seconds.

Pure: the caller passes the time, the address and the networks.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

APPLE_MPP = "apple_mpp"
PREFETCH_PROXY = "prefetch_proxy"
SCANNER_USER_AGENT = "scanner_user_agent"
SCANNER_NETWORK = "scanner_network"
TOO_SOON = "too_soon"
LINK_BURST = "link_burst"

# (label, reason, pattern) in the order they are tried; patterns are case-insensitive.
_AGENTS: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (label, reason, re.compile(pattern, re.IGNORECASE))
    for label, reason, pattern in (
        # Apple Mail Privacy Protection prefetches through a proxy that says only this.
        ("apple-mail-privacy-protection", APPLE_MPP, r"^Mozilla/5\.0$"),
        ("gmail-image-proxy", PREFETCH_PROXY, r"GoogleImageProxy|ggpht\.com"),
        ("yahoo-mail-proxy", PREFETCH_PROXY, r"YahooMailProxy"),
        (
            "outlook-safelinks",
            SCANNER_USER_AGENT,
            r"SafeLinks|Microsoft Defender|BingPreview|Microsoft Office Protocol Discovery",
        ),
        (
            "security-scanner",
            SCANNER_USER_AGENT,
            r"Barracuda|Mimecast|Proofpoint|MessageLabs|Symantec|Trend ?Micro|IronPort"
            r"|FireEye|Sophos|Forcepoint|Zscaler|Avanan|Cisco|Check ?Point|urldefense",
        ),
        (
            "headless-browser",
            SCANNER_USER_AGENT,
            r"HeadlessChrome|PhantomJS|Puppeteer|Playwright",
        ),
        (
            "http-library",
            SCANNER_USER_AGENT,
            r"^(?:python-requests|python-urllib|python-httpx|aiohttp|curl|Wget|Go-http-client"
            r"|Java|okhttp|libwww-perl|axios|node-fetch|Apache-HttpClient)\b",
        ),
        ("crawler", SCANNER_USER_AGENT, r"(?:bot|crawler|spider|preview)\b"),
    )
)

# Networks whose hits are machines', as the operators publish them (docs/tracking.md says
# where each comes from; check them now and then, they change). (reason, CIDR)
KNOWN_NETWORKS: tuple[tuple[str, str], ...] = (
    # Apple: all of 17.0.0.0/8 is Apple's; Mail Privacy Protection fetches from it.
    (APPLE_MPP, "17.0.0.0/8"),
    # Google's image proxy (ggpht.com) for Gmail.
    (PREFETCH_PROXY, "66.102.0.0/20"),
    (PREFETCH_PROXY, "66.249.80.0/20"),
    # Microsoft Exchange Online Protection (Defender for Office 365 Safe Links), as published
    # in "Microsoft 365 URLs and IP address ranges" (Exchange Online, ID 2).
    (SCANNER_NETWORK, "40.92.0.0/15"),
    (SCANNER_NETWORK, "40.107.0.0/16"),
    (SCANNER_NETWORK, "52.100.0.0/14"),
    (SCANNER_NETWORK, "104.47.0.0/17"),
    # Mimecast (US and UK gateways).
    (SCANNER_NETWORK, "205.139.110.0/24"),
    (SCANNER_NETWORK, "216.205.24.0/24"),
    (SCANNER_NETWORK, "207.211.30.0/24"),
    (SCANNER_NETWORK, "185.58.84.0/22"),
    (SCANNER_NETWORK, "195.130.217.0/24"),
    # Proofpoint (pphosted.com).
    (SCANNER_NETWORK, "148.163.128.0/19"),
    (SCANNER_NETWORK, "67.231.144.0/20"),
    # Barracuda Email Security Service.
    (SCANNER_NETWORK, "209.222.80.0/21"),
    (SCANNER_NETWORK, "64.235.144.0/20"),
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SEEN_ADDRESSES = 16_384  # client addresses whose network rule is remembered


@dataclass(frozen=True)
class MachineRules:
    """What the rules need besides the hit: the networks (known ones and the operator's) and
    how soon after its issue a mail can be opened or clicked by a person."""

    networks: tuple[tuple[str, Network], ...]
    too_soon_s: float
    # (version, first, last, reason) of each network, as integers: ~10x cheaper per hit than
    # ipaddress's `in`.
    _ranges: tuple[tuple[int, int, int, str], ...] = ()
    _seen: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        ranges = tuple(
            (n.version, int(n.network_address), int(n.broadcast_address), reason)
            for reason, n in self.networks
        )
        object.__setattr__(self, "_ranges", ranges)

    @classmethod
    def build(cls, extra_networks: Iterable[str] = (), too_soon_s: float = 2.0) -> MachineRules:
        """Raises ValueError on a malformed CIDR (at start-up, from the settings)."""
        networks = [(reason, ipaddress.ip_network(cidr)) for reason, cidr in KNOWN_NETWORKS]
        networks += [(SCANNER_NETWORK, ipaddress.ip_network(c.strip())) for c in extra_networks]
        return cls(tuple(networks), too_soon_s)

    def network_reason(self, address: str) -> str:
        """The network rule's reason for ``address`` ("" for none). Remembered per address:
        a campaign's hits come through a few thousand proxies and gateways, and parsing the
        address (``ipaddress``) cost more than the rest of the open's rules."""
        known = self._seen.get(address)
        if known is None:
            if len(self._seen) >= SEEN_ADDRESSES:
                self._seen.clear()  # bounded: a flood of distinct addresses costs a re-parse
            known = self._seen[address] = self._network_reason(address)
        return known

    def _network_reason(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return ""
        version, value = ip.version, int(ip)
        for net_version, first, last, reason in self._ranges:
            if net_version == version and first <= value <= last:
                return reason
        return ""


def machine_agent(user_agent: str) -> str | None:
    """The kind of machine behind ``user_agent`` ("gmail-image-proxy"...), or None for a
    person's mail client. A missing User-Agent counts as a machine: every mail client sends one.
    """
    found = _agent(user_agent)
    return found[0] if found else None


@functools.lru_cache(maxsize=4096)  # a campaign's hits come from a few hundred agents
def _agent(user_agent: str) -> tuple[str, str] | None:
    agent = user_agent.strip()
    if not agent:
        return "no-user-agent", SCANNER_USER_AGENT
    for label, reason, pattern in _AGENTS:
        if pattern.search(agent):
            return label, reason
    return None


def is_machine_open(user_agent: str) -> bool:
    return machine_agent(user_agent) is not None


def machine_reason(
    rules: MachineRules, *, user_agent: str, client_ip: str, issued_at: int, now: float
) -> str:
    """Why this open or click is a machine's (one of the reasons above), or "" for a person.
    ``issued_at`` is the mail's issue time from the signed link (0: unknown, rule skipped)."""
    agent = _agent(user_agent)
    if agent is not None:
        return agent[1]
    network = rules.network_reason(client_ip)
    if network:
        return network
    if issued_at > 0 and now - issued_at < rules.too_soon_s:
        return TOO_SOON
    return ""


def client_address(peer: str, forwarded_for: str, trusted: Iterable[Network]) -> str:
    """The client's address: the socket's peer, unless the peer is a trusted proxy, in which
    case the right-most address of ``X-Forwarded-For`` that is not itself a trusted proxy (the
    left part of the header is whatever the client chose to send, so it is never believed)."""
    trusted = tuple(trusted)
    if not forwarded_for or not _in(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)
