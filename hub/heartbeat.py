"""The hub's heartbeat: its own health, as one ordinary Sunbird v3 LOG event in its own store.

Hubs sit behind NAT, so nobody can scrape them; but each already has a data path to the institute. Every
`upstream.heartbeat_interval` seconds the hub writes one LOG event (actor the hub, `context.pdata.id`
"telemetry-hub") holding the figures of its status page into its store. It is then delivered like any
event: in order, through the normal batches, and kept through an outage. docs/fleet.md says how the
institute reads it. The figures are those of `StatusFacts.facts()` at the moment the event is made, so a
heartbeat and `/status.json` taken together agree (the heartbeat's own event is not in its backlog yet).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson

from .clocksync import clock_synchronised
from .errors import StoreClosed, StoreFull, StoreUnavailable
from .facts import StatusFacts
from .store import Store
from .telemetry import Checked, Event

__all__ = ["PDATA_ID", "Heartbeat"]

log = logging.getLogger(__name__)

PDATA_ID = "telemetry-hub"
_LEVEL = {"ok": "INFO", "attention": "WARN", "failing": "ERROR"}
_DAY_MS = 86400 * 1000


class Heartbeat:
    """Makes and stores one heartbeat event per call of `beat()` (the scheduler calls it)."""

    def __init__(self, store: Store, facts: StatusFacts, *, hub_id: str, version: str, channel: str) -> None:
        self.store = store
        self.facts = facts
        self.hub_id = hub_id
        self.version = version
        self.channel = channel  # upstream.channel_id; "" = the branch's own, from its newest event
        self._since: tuple[float, int, int] | None = None  # (time, received, delivered) at the last heartbeat
        self.sent = 0

    async def start(self) -> None:
        """Take the baseline the first heartbeat counts from (the hub's start)."""
        counters = await self.store.read.counters()
        self._since = (time.time(), int(counters.get("received", 0)), self.store.stats.delivered)

    async def event(self) -> dict[str, Any]:
        """The heartbeat event for now, from the status page's facts."""
        facts = await self.facts.facts()
        now = float(facts["now"])
        ev, up, st = facts["events"], facts["upstream"], facts["store"]
        since_at, since_received, since_delivered = self._since or (self.facts.started_at, 0, 0)
        channel = self.channel or await self.store.read.newest_channel() or PDATA_ID
        problems = [str(p["message"]) for p in facts["problems"]]
        figures = {
            "state": facts["state"],
            "backlog": ev["backlog"],
            "oldest_waiting_age_s": up["oldest_waiting_age_s"],
            "received_since_last": ev["received"] - since_received,
            "delivered_since_last": ev["delivered"] - since_delivered,
            "since_last_s": round(now - since_at, 1),
            "devices_24h": await self.store.read.devices_seen_since(int(now * 1000) - _DAY_MS),
            "quarantined": ev["quarantined"],
            "dead_letters": ev["dead_letters"],
            "free_bytes": st["free_bytes"],
            "db_bytes": st["db_bytes"],
            "max_bytes": st["max_bytes"],
            "clock_synchronised": clock_synchronised(),
            "link": up["link"],
            "last_error_kind": up["last_error_kind"],
            "problems": problems,
            "branch": facts["hub"]["branch"],
            "uptime_s": round(now - float(facts["hub"]["started_at"]), 1),
        }
        return {
            "eid": "LOG",
            "ets": int(now * 1000),
            "ver": "3.0",
            "mid": f"LOG:{uuid.uuid4()}",
            "actor": {"id": self.hub_id, "type": "System"},
            "context": {
                "channel": channel,
                "pdata": {"id": PDATA_ID, "ver": self.version, "pid": "telemetry-hub.heartbeat"},
                "env": "telemetry-hub",
                "did": self.hub_id,
            },
            "edata": {
                "type": "system",
                "level": _LEVEL.get(str(facts["state"]), "INFO"),
                "message": "; ".join([str(facts["state_text"]), *problems]),
                "params": [figures],
            },
        }

    async def beat(self) -> bool:
        """Store one heartbeat; False (logged) when the store cannot take it now: the next one will try."""
        doc = await self.event()
        raw = orjson.dumps(doc)
        ctx = doc["context"]
        # did None in the row: the hub is not one of the branch's devices (its id is in the event's bytes).
        event = Event(raw, doc["mid"], "LOG", float(doc["ets"]), None, ctx["channel"], PDATA_ID)
        figures = doc["edata"]["params"][0]
        try:
            result = await self.store.add(Checked(events=[event]), source="hub:heartbeat")
        except (StoreFull, StoreUnavailable, StoreClosed) as exc:
            log.warning("heartbeat not stored: %s; the next one follows in upstream.heartbeat_interval", exc)
            return False
        now = doc["ets"] / 1000
        received = figures["received_since_last"] + (self._since[1] if self._since else 0)
        delivered = figures["delivered_since_last"] + (self._since[2] if self._since else 0)
        # The heartbeat itself was received: the next one counts from after it.
        self._since = (now, received + result.new + result.duplicates, delivered)
        self.sent += 1
        log.debug("heartbeat %s stored (%d waiting)", doc["mid"], figures["backlog"])
        return True
