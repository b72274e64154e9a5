"""Opens by mail-privacy proxies and scanners are told apart from readers' opens."""

from __future__ import annotations

import pytest

from services.tracking.domain.machine_opens import is_machine_open, machine_agent


@pytest.mark.parametrize(
    ("user_agent", "label"),
    [
        ("Mozilla/5.0", "apple-mail-privacy-protection"),
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0"
            " (via ggpht.com GoogleImageProxy)",
            "gmail-image-proxy",
        ),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "yahoo-mail-proxy",
        ),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "security-scanner"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0",
            "headless-browser",
        ),
        ("python-requests/2.31.0", "http-library"),
        ("curl/8.5.0", "http-library"),
        (
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "crawler",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 BingPreview/1.0b",
            "outlook-safelinks",
        ),
        ("Googlebot/2.1 (+http://www.google.com/bot.html)", "crawler"),
        ("", "no-user-agent"),
    ],
)
def test_machines_are_recognised(user_agent: str, label: str) -> None:
    assert machine_agent(user_agent) == label


@pytest.mark.parametrize(
    "user_agent",
    [
        # Apple Mail opened by the reader (no privacy protection)
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.4.0",
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15"
        " (KHTML, like Gecko) Mobile/15E148",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0 Mobile Safari/537.36",
    ],
)
def test_readers_mail_clients_are_people(user_agent: str) -> None:
    assert not is_machine_open(user_agent)
