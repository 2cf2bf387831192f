"""One device's story for branch IT: `/device?did=...` (page), `/device.json?did=...` (CLI), `?q=` searches.

"My progress is not in the dashboard": when did this tablet last sync, how many of its events are here,
delivered, waiting, quarantined (and why)? Same access rule as the status page.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from ..store import DeviceStory, Store
from ..words import ago, clock, short_number, thousands
from . import pages
from .admin import token_refused
from .responses import json_response
from .status import StatusPages

__all__ = ["DeviceStories"]

_DAYS = 14  # the chart's days
_MATCHES = 20  # devices listed for a prefix
_CHART_HEIGHT = 60


@dataclass(frozen=True)
class _Bar:
    x: int
    y: str
    height: str
    title: str


def story_json(s: DeviceStory) -> dict[str, Any]:
    """The story JSON-ready: times in epoch seconds, like /status.json."""
    out = asdict(s)
    for key in ("first_seen", "last_seen", "last_delivered_at"):
        out[key] = out[key] / 1000 if out[key] is not None else None
    out["quarantined"] = [{"reason": r, "count": n} for r, n in s.quarantined]
    out["quarantined_count"] = sum(n for _, n in s.quarantined)
    out["addresses"] = [{"address": a, "last_seen": t / 1000} for a, t in s.addresses]
    out["per_day"] = [{"day_start": d / 1000, "received": n} for d, n in s.per_day]
    return out


def _bars(per_day: list[tuple[int, int]]) -> tuple[list[_Bar], str]:
    peak = max([n for _, n in per_day] + [1])
    bars = []
    for i, (day, n) in enumerate(per_day):
        h = _CHART_HEIGHT * n / peak
        if n and h < 1.5:
            h = 1.5
        label = time.strftime("%a %d %b", time.gmtime(day / 1000))
        bars.append(_Bar(i * 10 + 1, f"{_CHART_HEIGHT - h:.2f}", f"{h:.2f}", f"{label}: {n:,} events"))
    return bars, short_number(peak)


class DeviceStories:
    """The device page and its JSON; `status` decides who may read them (the status page's rule)."""

    def __init__(self, store: Store, status: StatusPages) -> None:
        self.store = store
        self.status = status

    def routes(self) -> list[web.RouteDef]:
        """The device paths, for the composition root to mount."""
        return [web.get("/device", self.page), web.get("/device.json", self.as_json)]

    async def _lookup(self, request: web.Request) -> tuple[str, DeviceStory | None, list[tuple[str, int]]]:
        did = request.query.get("did", "")
        prefix = request.query.get("q", "").strip()
        now_ms = int(time.time() * 1000)
        if not did and prefix:
            matches = await self.store.read.find_devices(prefix, _MATCHES)
            if len(matches) == 1:
                did = matches[0][0]
            else:
                return prefix, None, matches
        story = await self.store.read.device_story(did, _DAYS, now_ms) if did else None
        return did or prefix, story, []

    async def as_json(self, request: web.Request) -> web.Response:
        """The story as JSON (`telemetry-hub device DID --json`); 404 names what was asked."""
        if not self.status.allowed(request):
            return token_refused(request)
        asked, story, matches = await self._lookup(request)
        if story is None:
            return json_response(
                404,
                {
                    "error": f"no device {asked!r} has sent telemetry to this hub"
                    + (" (give more of the id: several match)" if matches else ""),
                    "matches": [{"did": d, "last_seen": t / 1000} for d, t in matches],
                },
            )
        return json_response(200, story_json(story), {"Cache-Control": "no-store"})

    async def page(self, request: web.Request) -> web.Response:
        """The device page for a phone's browser (no script needed)."""
        if not self.status.allowed(request):
            return pages.login_page(401, None, token_place=self.status.token_place)
        asked, story, matches = await self._lookup(request)
        now = time.time()
        context: dict[str, Any] = {
            "asked": asked,
            "matches": [{"did": d, "ago": ago(t / 1000, now)} for d, t in matches],
            "story": None,
        }
        if story is not None:
            bars, peak = _bars(story.per_day)
            context["story"] = {
                "did": story.did,
                "first_seen": clock(story.first_seen / 1000),
                "first_seen_ago": ago(story.first_seen / 1000, now),
                "last_seen": clock(story.last_seen / 1000),
                "last_seen_ago": ago(story.last_seen / 1000, now),
                "requests": story.requests,
                "requests_text": thousands(story.requests),
                "received": story.received,
                "received_text": thousands(story.received),
                "duplicates": story.duplicates,
                "duplicates_text": thousands(story.duplicates),
                "stored": story.stored,
                "stored_text": thousands(story.stored),
                "delivered": story.delivered,
                "delivered_text": thousands(story.delivered),
                "last_delivered": ago(story.last_delivered_at / 1000, now) if story.last_delivered_at else "never",
                "waiting": story.waiting,
                "waiting_text": thousands(story.waiting),
                "dead_letters": story.dead_letters,
                "quarantined": sum(n for _, n in story.quarantined),
                "reasons": [{"reason": r, "count": thousands(n)} for r, n in story.quarantined],
                "addresses": [{"address": a, "ago": ago(t / 1000, now)} for a, t in story.addresses],
                "bars": bars,
                "peak": peak,
                "days": len(story.per_day),
                "first_day": time.strftime("%a %d %b", time.gmtime(story.per_day[0][0] / 1000)),
                "chart_width": 10 * len(story.per_day),
                "chart_height": _CHART_HEIGHT,
            }
        status = 200 if story is not None or not asked else 404
        return pages.page(status, "device.html", f"Device {asked}" if asked else "Devices", **context)
