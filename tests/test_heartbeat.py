"""The heartbeat: the hub's health as Sunbird LOG events, queued through an outage, delivered after it."""

from __future__ import annotations

import json
import uuid

import pytest
from support.drive import FAST, send, wait_for
from support.events import make_events

from hub.schema import SchemaChecker

pytestmark = pytest.mark.slow  # waits for heartbeats every 2 s

HEARTBEATS = "SELECT raw FROM stored_events WHERE pdata_id = 'telemetry-hub' ORDER BY seq"


def heartbeats(hub) -> list[dict]:
    return [json.loads(raw) for (raw,) in hub.rows(HEARTBEATS)]


async def test_heartbeats_queue_through_an_outage_and_match_the_status(start_hub, http, upstream):
    await upstream.down()
    hub = await start_hub(
        upstream={"url": upstream.url, **FAST, "heartbeat_interval": 2, "channel_id": "branch-channel"}
    )
    await send(http, hub, make_events(7, did="tablet-1"), "tablet-1")
    junk = {"mid": "junk-" + uuid.uuid4().hex, "ets": 1}  # no eid: quarantined
    await send(http, hub, [*make_events(1, did="tablet-2"), junk], "tablet-2")
    await wait_for(lambda: len(heartbeats(hub)) >= 1, timeout=10, what="a first heartbeat")
    # Between two heartbeats, /status.json shows what the last one said (plus that heartbeat, now waiting).
    while True:
        before = len(heartbeats(hub))
        async with http.get(hub.url + "/status.json") as r:
            status = await r.json()
        if len(heartbeats(hub)) == before:
            break
    beat = heartbeats(hub)[-1]
    figures = beat["edata"]["params"][0]
    assert figures["backlog"] + 1 == status["events"]["backlog"]
    assert figures["quarantined"] == status["quarantine"]["count"] == 1
    assert figures["dead_letters"] == status["dead_letters"]["count"] == 0
    assert figures["devices_24h"] == status["devices"]["count"] == 2  # the hub itself is not a device
    assert figures["link"] == status["upstream"]["link"] == "down"
    assert figures["last_error_kind"] == status["upstream"]["last_error_kind"] is not None
    assert figures["max_bytes"] == status["store"]["max_bytes"]
    assert figures["state"] == status["state"] and beat["edata"]["level"] in ("WARN", "INFO")
    assert isinstance(figures["clock_synchronised"], (bool, type(None)))
    assert figures["oldest_waiting_age_s"] is not None and figures["free_bytes"] > 0
    first = heartbeats(hub)[0]["edata"]["params"][0]  # 8 stored and 1 quarantined: received
    assert first["received_since_last"] == 9 and first["delivered_since_last"] == 0
    if before >= 2:  # the next ones count from after the one before them (which was received too)
        assert figures["received_since_last"] == 0
    for doc in heartbeats(hub):
        assert SchemaChecker().violation(doc) is None, doc
        assert doc["eid"] == "LOG" and doc["actor"] == {"id": hub.hub.hub_id, "type": "System"}
        assert doc["context"]["pdata"]["id"] == "telemetry-hub" and doc["context"]["pdata"]["ver"]
        assert doc["context"]["did"] == hub.hub.hub_id and doc["context"]["channel"] == "branch-channel"
        assert doc["edata"]["type"] == "system"

    # The link comes back: every queued heartbeat is delivered, in order, in the normal batches.
    queued = [b["mid"] for b in heartbeats(hub)]
    await upstream.up()
    await wait_for(lambda: set(queued) <= upstream.mids, timeout=20, what="the queued heartbeats upstream")
    arrived = [e for e in upstream.events if e["context"]["pdata"]["id"] == "telemetry-hub"]
    assert [e["mid"] for e in arrived][: len(queued)] == queued
    assert all(b.channel_id == "branch-channel" for b in upstream.batches if set(b.mids) & set(queued))
    # A heartbeat after the outage says the link is up and counts what was delivered since the one before.
    await wait_for(
        lambda: any(b["edata"]["params"][0]["link"] == "up" for b in heartbeats(hub)), timeout=10, what="an up beat"
    )
    later = next(b for b in heartbeats(hub) if b["edata"]["params"][0]["link"] == "up")["edata"]["params"][0]
    assert later["delivered_since_last"] >= 8 and later["backlog"] <= 1


async def test_heartbeat_interval_zero_writes_none(start_hub):
    hub = await start_hub(upstream={"heartbeat_interval": 0})
    assert hub.hub.scheduler is not None and hub.hub.scheduler.get_job("heartbeat") is None
    default = await start_hub(server={"port": 0, "data_dir": str(hub.hub.data_dir.parent / "other")})
    assert default.hub.scheduler.get_job("heartbeat").trigger.interval.total_seconds() == 900
