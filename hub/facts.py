"""Every fact branch IT sees about the hub, gathered in one place.

The status page, `/status.json` and `telemetry-hub status` all show `StatusFacts.facts()`, so the
three never disagree; `/health` uses the same rules (health.py) on the same figures.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .clock import ClockCheck
from .config import SUNBIRD_PATH, Config
from .discovery import local_urls
from .forward import Forwarder, Outcome
from .health import HEALTH_MARGIN_BYTES, STATE_TEXT, HealthInputs, Problem, assess, state_of
from .store import Store
from .telemetry import refusal_words
from .words import LINK_TEXT

__all__ = ["Here", "StatusFacts", "is_loopback", "page_needs_token"]

log = logging.getLogger(__name__)

_RECENT_DEVICES = 20
_TOP_REASONS = 5
_LOOPBACK_NAMES = ("localhost",)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


class RequestCounts(Protocol):
    """What the device API counts (web.device.IngestCounters)."""

    requests: int
    by_status: dict[int, int]
    client_errors: dict[str, int]


@dataclass(frozen=True)
class Here:
    """How the person asking reached the hub: shapes the device URLs offered to them."""

    scheme: str  # http | https
    port: int  # the port they connected to (the real one, even when configured as 0)
    host: str  # the Host they used


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only ("" = every address: no)."""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every address) or a host name: reachable from the LAN


def page_needs_token(cfg: Config) -> bool:
    """Whether the status page, status JSON and metrics ask for the admin token (auto: unless on loopback)."""
    mode = cfg.auth.status_page_requires_token
    if mode in ("yes", "no"):
        return mode == "yes"
    return not is_loopback(cfg.server.host)


class StatusFacts:
    """Answers 'is the hub healthy, and why not' from the store's live figures and the forwarder's state."""

    def __init__(
        self,
        store: Store,
        counts: RequestCounts,
        forwarder: Forwarder,
        cfg: Config,
        *,
        version: str,
        hub_id: str,
        clock: ClockCheck | None = None,
    ) -> None:
        self.clock = clock
        self.store = store
        self.counts = counts
        self.forwarder = forwarder
        self.cfg = cfg
        self.version = version
        self.hub_id = hub_id
        self.started_at = time.time()
        self._down_since: float | None = None

    def on_batch(self, kind: str, outcome: Outcome, n_events: int, seconds: float) -> None:
        """Remember since when upstream has been unreachable (the forwarder keeps only the current state)."""
        if kind == "network":
            if self._down_since is None:
                self._down_since = time.time() - seconds
        else:
            self._down_since = None

    def assess(self, writable: bool, now: float | None = None) -> list[Problem]:
        """Everything wrong right now, worst first; from in-memory figures only."""
        s = self.store.stats
        st = self.forwarder.state
        inputs = HealthInputs(
            writable=writable,
            space_problem=self.store.space_problem(HEALTH_MARGIN_BYTES),
            db_bytes=s.db_bytes,
            free_bytes=s.free_bytes,
            max_bytes=self.store.cfg.max_bytes,
            min_free_bytes=self.store.cfg.min_free_bytes,
            backlog=s.backlog,
            dead_letters=s.dead_letters,
            upstream_configured=self.forwarder.enabled,
            link=st.link,
            last_error=st.last_error,
            last_error_at=st.last_error_at,
            down_since=self._down_since,
            waiting_for=st.waiting_for,
            store_error=None if writable else s.unavailable,
            oldest_waiting_at=s.oldest_waiting_at,
            oldest_waiting_since=s.oldest_waiting_since,
            clock_synchronised=self.clock.state().synchronised if self.clock is not None else None,
        )
        return assess(inputs, self.cfg.health, time.time() if now is None else now)

    async def state(self) -> str:
        """ok | attention | failing, by the same rules as the status page (for the state metric)."""
        return state_of(self.assess(await self.store.writable()))

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the /health body): healthy while the store takes writes and has room."""
        writable = await self.store.writable()
        s = self.store.stats
        st = self.forwarder.state
        found = self.assess(writable)
        problems = [p.message for p in found if p.severity == "critical"]
        return not problems, {
            "healthy": not problems,
            "problems": problems,
            "warnings": [p.message for p in found if p.severity == "warning"],
            "state": state_of(found),
            "version": self.version,
            "hub": self.hub_id,
            "store_writable": writable,
            "backlog": s.backlog,
            "stored_total": s.stored_total,
            "quarantined": s.quarantined,
            "duplicates": s.duplicates,
            "delivered": s.delivered,
            "dead_letters": s.dead_letters,
            "db_bytes": s.db_bytes,
            "free_bytes": s.free_bytes,
            "link": st.link,
            "last_success_at": st.last_success_at,
            "last_error": st.last_error,
            "oldest_waiting_age_s": _rounded(s.oldest_waiting_age(time.time())),
            "clock": self._clock(),
        }

    async def facts(self, here: Here | None = None) -> dict[str, Any]:
        """Every fact the status page shows, JSON-ready (times are epoch seconds)."""
        now = time.time()
        writable = await self.store.writable()
        problems = self.assess(writable, now)
        state = state_of(problems)
        s = self.store.stats
        st = self.forwarder.state
        store = self.store
        counters = await store.read.counters()
        hour_now = int(now // 3600)
        per_hour = {h: {"received": 0, "delivered": 0} for h in range(hour_now - 23, hour_now + 1)}
        for hour, kind, n in await store.read.hourly(hour_now - 23, hour_now):
            if hour in per_hour and kind in ("received", "delivered"):
                per_hour[hour][kind] += n
        hourly = [{"hour_start": h * 3600, **v} for h, v in sorted(per_hour.items())]
        recent = await store.read.recent_devices(_RECENT_DEVICES)
        last_delivery = max(st.last_success_at or 0.0, await store.read.last_delivery_ms() / 1000) or None
        urls, url_note = await self._device_urls(here)
        cap = store.cfg.max_bytes
        space = store.space_problem()
        return {
            "healthy": state == "ok",
            "state": state,
            "state_text": STATE_TEXT[state],
            "problems": [asdict(p) for p in problems],
            "now": now,
            "hub": {
                "id": self.hub_id,
                "version": self.version,
                "branch": self.cfg.server.branch_name,
                "started_at": self.started_at,
            },
            "events": {
                "received": int(counters.get("received", 0)),
                "duplicates": s.duplicates,
                "quarantined": s.quarantined,
                "backlog": s.backlog,
                "delivered": s.delivered,
                "dead_letters": s.dead_letters,
            },
            "upstream": {
                "configured": self.forwarder.enabled,
                "url": self.forwarder.target,
                "link": st.link,
                "link_text": LINK_TEXT.get(st.link, st.link),
                "last_delivery_at": last_delivery,
                "last_error": st.last_error,
                "last_error_at": st.last_error_at,
                "last_error_kind": st.last_error_kind,
                "unreachable_since": self._down_since if st.link == "down" else None,
                "next_attempt_at": st.next_attempt_at,
                "waiting_for": st.waiting_for,
                "errors": dict(sorted(st.errors.items())),
                "batch_limit": st.batch_limit,
                "oldest_waiting_at": s.oldest_waiting_at,
                "oldest_waiting_age_s": _rounded(s.oldest_waiting_age(now)),
                "oldest_waiting_since": s.oldest_waiting_since,
            },
            "store": {
                "writable": writable,
                "accepting": space is None and writable,
                "refusal": space,
                "db_bytes": s.db_bytes,
                "max_bytes": cap,
                "used_fraction": round(s.db_bytes / cap, 4) if cap else None,
                "warn_fraction": self.cfg.health.store_warn_fraction,
                "free_bytes": s.free_bytes,
                "min_free_bytes": store.cfg.min_free_bytes,
                "last_commit_at": s.last_commit_at or None,
            },
            "hourly": hourly,
            "last_24h": {
                "received": sum(h["received"] for h in hourly),
                "delivered": sum(h["delivered"] for h in hourly),
            },
            "devices": {
                "count": await store.read.device_count(),
                "recent": [
                    {
                        "did": d.did,
                        "first_seen": d.first_seen / 1000,
                        "last_seen": d.last_seen / 1000,
                        "events": d.events,
                    }
                    for d in recent
                ],
            },
            "quarantine": {"count": s.quarantined, "top_reasons": await self._top_reasons("quarantine")},
            "dead_letters": {"count": s.dead_letters, "top_reasons": await self._top_reasons("dead_letter")},
            "requests": {
                "total": self.counts.requests,
                "by_status": {str(k): v for k, v in sorted(self.counts.by_status.items())},
                "refused": dict(sorted(self.counts.client_errors.items())),
            },
            "device_urls": urls,
            "device_urls_note": url_note,
            "clock": self._clock(),
        }

    def _clock(self) -> dict[str, Any]:
        return dict(self.clock.facts()) if self.clock is not None else {"synchronised": None, "ets_in_answers": True}

    async def _top_reasons(self, kind: str) -> list[dict[str, Any]]:
        rows = await self.store.read.top_reasons(kind, _TOP_REASONS)
        if kind != "dead_letter":
            return [{"reason": reason, "count": n} for reason, n in rows]
        merged: dict[str, int] = {}
        for reason, n in rows:  # upstream's raw answers differ (ids, times); their words may not
            words = refusal_words(reason)
            merged[words] = merged.get(words, 0) + n
        return [{"reason": r, "count": n} for r, n in sorted(merged.items(), key=lambda kv: -kv[1])]

    async def _device_urls(self, here: Here | None) -> tuple[list[str], str | None]:
        """The telemetry URL devices should use, one per address devices can reach, and a caveat."""
        host = self.cfg.server.host.strip()
        ports = {"http": self.cfg.server.port, "https": self.cfg.tls.port if self.cfg.tls.enabled else 0}
        if here is not None and here.port:
            ports[here.scheme] = here.port
        schemes = [(scheme, port) for scheme, port in ports.items() if port]
        if host and host not in ("0.0.0.0", "::"):
            bare = host.strip("[]")
            shown = f"[{bare}]" if ":" in bare else bare
            urls = [f"{scheme}://{shown}:{port}{SUNBIRD_PATH}" for scheme, port in schemes]
            if is_loopback(host):
                return urls, (
                    f"The hub listens only on {host}, so devices cannot reach it. "
                    'Set server.host = "" (every address) in the config to let them in.'
                )
            return urls, None
        urls = []
        try:
            for scheme, port in schemes:
                urls += await asyncio.to_thread(local_urls, port, SUNBIRD_PATH, scheme)
        except OSError as exc:
            log.debug("cannot list this host's addresses: %s", exc)
        if not urls and here is not None:
            return [f"{here.scheme}://{here.host}{SUNBIRD_PATH}"], None
        return urls, None if urls else "This host has no network address yet."
