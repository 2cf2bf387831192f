"""Numbers and times in the words branch IT reads, shared by the status page, the import pages and the CLI.

Pure functions of their arguments (and the local time zone): no aiohttp, no HTML, so the page and
`telemetry-hub status` say the same thing the same way.
"""

from __future__ import annotations

import time

__all__ = [
    "LINK_TEXT",
    "ago",
    "clock",
    "duration_text",
    "nice_ceiling",
    "printable",
    "short_number",
    "size_text",
    "thousands",
]


def size_text(n: float) -> str:
    """A size in binary units with about two significant digits, so "1.4 GiB" reads at a glance."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


def duration_text(seconds: float) -> str:
    """A span of time in its two largest units ("3 h 5 min", "2 days 4 h"): precise enough to act on."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, rest = divmod(s, 86400)
    h = rest // 3600
    return f"{d} day{'s' if d != 1 else ''} {h} h" if h else f"{d} day{'s' if d != 1 else ''}"


def ago(when: float | None, now: float) -> str:
    """An epoch time relative to `now` ("5 min ago", "in 30 s", "never"): people judge staleness, not clocks."""
    if not when:
        return "never"
    delta = now - when
    if delta < -5:
        return f"in {duration_text(-delta)}"
    if delta < 10:
        return "just now"
    return f"{duration_text(delta)} ago"


def clock(when: float | None) -> str:
    """An epoch time as the hub's local date and time, to match against logs; "" for never."""
    if not when:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def thousands(value: int) -> str:
    """A count with thousands separators ("12,345"), so large backlogs are read right."""
    return f"{value:,}"


def short_number(n: int) -> str:
    """A count in at most a few characters ("20k", "1.5M"), for chart axis labels on a phone."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1000:
        return f"{n / 1000:g}k"
    return str(n)


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1): a chart scale people read."""
    if value <= 0:
        return 1
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def printable(text: str) -> str:
    """Device ids and upstream answers are not ours: no escape sequence reaches the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


# The upstream link states (ForwardState.link) in words: the status page, /status.json and the CLI say the same.
LINK_TEXT = {
    "up": "working",
    "down": "unreachable",
    "auth-failed": "API key rejected",
    "intercepted": "something other than the institute's server answers — a captive portal, a data-pack page or a proxy: log in or recharge the WAN link, or use an https:// upstream",
    "moved": "upstream answered a redirect (see the last error for where to): update upstream.url",
    "unknown": "not tried yet",
    "disabled": "not configured",
}
