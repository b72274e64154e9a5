"""Opens and clicks by mail-privacy proxies and scanners are told apart from readers', with
user agents and addresses as such machines and real mail clients send them."""

from __future__ import annotations

import ipaddress

import pytest

from services.tracking.domain.machine_opens import (
    APPLE_MPP,
    PREFETCH_PROXY,
    SCANNER_NETWORK,
    SCANNER_USER_AGENT,
    SEEN_ADDRESSES,
    TOO_SOON,
    MachineRules,
    client_address,
    is_machine_open,
    machine_agent,
    machine_reason,
)

RULES = MachineRules.build(["203.0.113.0/24"], too_soon_s=2.0)
HOME = "198.51.100.23"  # a reader's address (documentation range, in no list)
ISSUED = 1_790_000_000
LATER = ISSUED + 3600.0

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
APPLE_MAIL = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
IPHONE_MAIL = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Mobile/15E148"
)

# (user agent, label, reason) as the machines send them.
MACHINES = [
    ("Mozilla/5.0", "apple-mail-privacy-protection", APPLE_MPP),
    (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "gmail-image-proxy",
        PREFETCH_PROXY,
    ),
    (
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
        "yahoo-mail-proxy",
        PREFETCH_PROXY,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " BingPreview/1.0b",
        "outlook-safelinks",
        SCANNER_USER_AGENT,
    ),
    ("Microsoft Office Protocol Discovery", "outlook-safelinks", SCANNER_USER_AGENT),
    ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "security-scanner", SCANNER_USER_AGENT),
    ("Barracuda Networks Link Protection", "security-scanner", SCANNER_USER_AGENT),
    ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "security-scanner", SCANNER_USER_AGENT),
    ("Proofpoint URL Defense", "security-scanner", SCANNER_USER_AGENT),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0",
        "headless-browser",
        SCANNER_USER_AGENT,
    ),
    ("python-requests/2.31.0", "http-library", SCANNER_USER_AGENT),
    ("curl/8.5.0", "http-library", SCANNER_USER_AGENT),
    (
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "crawler",
        SCANNER_USER_AGENT,
    ),
    ("Googlebot/2.1 (+http://www.google.com/bot.html)", "crawler", SCANNER_USER_AGENT),
    ("", "no-user-agent", SCANNER_USER_AGENT),
]

PEOPLE = [
    APPLE_MAIL,  # Apple Mail opened by the reader, privacy protection off
    IPHONE_MAIL,
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.4.0",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/126.0 Mobile Safari/537.36",
    CHROME,
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
]


@pytest.mark.parametrize(("user_agent", "label", "reason"), MACHINES)
def test_machines_are_recognised_by_user_agent(user_agent: str, label: str, reason: str) -> None:
    assert machine_agent(user_agent) == label
    assert machine_reason(RULES, user_agent=user_agent, client_ip=HOME, issued_at=0, now=LATER) == (
        reason
    )


@pytest.mark.parametrize("user_agent", PEOPLE)
def test_readers_mail_clients_and_browsers_are_people(user_agent: str) -> None:
    assert not is_machine_open(user_agent)
    assert (
        machine_reason(RULES, user_agent=user_agent, client_ip=HOME, issued_at=ISSUED, now=LATER)
        == ""
    )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("17.58.101.7", APPLE_MPP),  # Apple's network
        ("66.102.8.33", PREFETCH_PROXY),  # Google's image proxy
        ("40.107.22.51", SCANNER_NETWORK),  # Exchange Online Protection (Safe Links)
        ("205.139.110.61", SCANNER_NETWORK),  # Mimecast
        ("148.163.150.12", SCANNER_NETWORK),  # Proofpoint
        ("209.222.82.250", SCANNER_NETWORK),  # Barracuda
        ("203.0.113.9", SCANNER_NETWORK),  # the operator's own list
        (HOME, ""),
        ("2001:db8::1", ""),
        ("not an address", ""),
    ],
)
def test_known_networks_are_machines_even_with_a_browsers_user_agent(
    address: str, reason: str
) -> None:
    assert (
        machine_reason(RULES, user_agent=CHROME, client_ip=address, issued_at=ISSUED, now=LATER)
        == reason
    )


def test_a_hit_within_seconds_of_the_issue_is_too_soon_and_later_is_a_person() -> None:
    def reason(now: float, issued_at: int = ISSUED) -> str:
        return machine_reason(
            RULES, user_agent=CHROME, client_ip=HOME, issued_at=issued_at, now=now
        )

    assert reason(ISSUED + 0.4) == TOO_SOON
    assert reason(ISSUED + 1.99) == TOO_SOON
    assert reason(ISSUED - 5) == TOO_SOON  # a clock a little behind delivery's: still a scanner
    assert reason(ISSUED + 2.0) == ""
    assert reason(ISSUED + 30) == ""
    assert reason(ISSUED + 0.4, issued_at=0) == ""  # a link without an issue time


def test_the_user_agent_rule_names_the_reason_before_the_network_and_the_time() -> None:
    assert (
        machine_reason(
            RULES, user_agent="Mozilla/5.0", client_ip="40.107.1.1", issued_at=ISSUED, now=ISSUED
        )
        == APPLE_MPP
    )


def test_a_malformed_operator_network_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError):
        MachineRules.build(["10.0.0.0/33"])


LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("127.0.0.1", "17.1.2.3", "17.1.2.3"),  # from a trusted proxy: its client
        ("127.0.0.1", "6.6.6.6, 17.1.2.3", "17.1.2.3"),  # the left part is the client's say
        ("127.0.0.1", "17.1.2.3, 10.1.1.1", "17.1.2.3"),  # through two trusted proxies
        ("198.51.100.23", "17.1.2.3", "198.51.100.23"),  # not a trusted proxy: ignored
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1"),
        ("127.0.0.1", "garbage", "garbage"),  # the rules read it as no address
    ],
)
def test_the_client_address_believes_x_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded: str, expected: str
) -> None:
    assert client_address(peer, forwarded, LOOPBACK) == expected


def test_the_network_rule_remembers_addresses_within_a_bound_and_answers_the_same() -> None:
    rules = MachineRules.build(["198.51.100.0/24"])
    assert rules.network_reason("198.51.100.7") == SCANNER_NETWORK
    assert rules.network_reason("198.51.100.7") == SCANNER_NETWORK  # remembered
    assert rules.network_reason("not an address") == ""
    for n in range(SEEN_ADDRESSES + 100):  # more distinct clients than it keeps
        assert rules.network_reason(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}") == ""
    assert len(rules._seen) <= SEEN_ADDRESSES
    assert rules.network_reason("198.51.100.7") == SCANNER_NETWORK
    assert rules.network_reason("17.58.1.1") == APPLE_MPP
