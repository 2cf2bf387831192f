"""kill -9 under load: every event the hub acknowledged is in the store after a restart."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import aiohttp
import pytest
from reliability.helpers import duplicate_rows
from support.events import make_events, mobile_request
from support.hubproc import HubProcess

pytestmark = pytest.mark.slow  # kill -9 under load

ROUNDS = 4


async def _load(url: str, acked: set[str], stop: asyncio.Event, client: int) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            events = make_events(random.choice((1, 20, 200)), did=f"crash-{client}")
            body, headers = mobile_request(events)
            # Now and then a device sends an acknowledged batch again (its ack was lost): stored once all the same.
            for _ in range(2 if random.random() < 0.1 else 1):
                try:
                    async with http.post(url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
                        if r.status == 200:
                            await r.read()
                            acked.update(e["mid"] for e in events)
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.01)


async def test_acknowledged_events_survive_kill_9(tmp_path):
    hub = HubProcess(tmp_path / "data")
    acked: set[str] = set()
    try:
        for round_ in range(ROUNDS):
            hub.start()
            stop = asyncio.Event()
            before = len(acked)
            clients = [asyncio.create_task(_load(hub.url, acked, stop, i)) for i in range(8)]
            await asyncio.sleep(random.uniform(0.5, 1.5))
            hub.kill()  # mid-load: requests and commits are in flight
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*clients)
            assert len(acked) > before, f"round {round_}: no request was acknowledged before the kill"
        hub.start()  # recovery after the last kill
    finally:
        hub.kill()
    con = sqlite3.connect(tmp_path / "data" / "hub.db")
    stored = {mid for (mid,) in con.execute("SELECT mid FROM events")}
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    dupes = duplicate_rows(con)
    con.close()
    assert not dupes, f"the store holds these mids more than once: {dupes}"
    missing = acked - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events lost after kill -9"
