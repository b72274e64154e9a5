"""Which opens a machine made: mail-privacy proxies and security scanners fetch every image
(and often every link) of a mail, so their opens say nothing about the reader. They are
flagged (``machine_open``) and counted apart, not dropped.

Only the User-Agent is known here; IP ranges would catch more (Apple's proxy) but change often.
"""

from __future__ import annotations

import re

# (label, pattern) in the order they are tried; patterns are case-insensitive.
_AGENTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern, re.IGNORECASE))
    for label, pattern in (
        # Apple Mail Privacy Protection prefetches through a proxy that says only this.
        ("apple-mail-privacy-protection", r"^Mozilla/5\.0$"),
        ("gmail-image-proxy", r"GoogleImageProxy|ggpht\.com"),
        ("yahoo-mail-proxy", r"YahooMailProxy"),
        ("outlook-safelinks", r"SafeLinks|Microsoft Defender|BingPreview"),
        (
            "security-scanner",
            r"Barracuda|Mimecast|Proofpoint|MessageLabs|Symantec|Trend ?Micro|IronPort"
            r"|FireEye|Sophos|Forcepoint|Zscaler|Avanan|Cisco|Check ?Point",
        ),
        ("headless-browser", r"HeadlessChrome|PhantomJS|Puppeteer|Playwright"),
        (
            "http-library",
            r"^(?:python-requests|python-urllib|python-httpx|aiohttp|curl|Wget|Go-http-client"
            r"|Java|okhttp|libwww-perl|axios|node-fetch|Apache-HttpClient)\b",
        ),
        ("crawler", r"(?:bot|crawler|spider|preview)\b"),
    )
)


def machine_agent(user_agent: str) -> str | None:
    """The kind of machine behind ``user_agent`` ("gmail-image-proxy"...), or None for a
    person's mail client. A missing User-Agent counts as a machine: every mail client sends one.
    """
    agent = user_agent.strip()
    if not agent:
        return "no-user-agent"
    for label, pattern in _AGENTS:
        if pattern.search(agent):
            return label
    return None


def is_machine_open(user_agent: str) -> bool:
    return machine_agent(user_agent) is not None
