"""kill -9 while forwarding under a flapping upstream: upstream ends with every acknowledged mid."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time

import aiohttp
import pytest
from reliability.helpers import duplicate_rows, upstream_duplicates
from support.events import make_events, mobile_request
from support.hubproc import HubProcess
from support.hubs import write_config

pytestmark = pytest.mark.slow  # kill -9 while forwarding

ROUNDS = 4


@pytest.mark.upstream_options(seed=11, reset_rate=0.1, reset_after_store=True, fail_rate=0.1)
async def test_kill_9_while_forwarding_loses_nothing(tmp_path, upstream):
    fake = upstream
    cfg = write_config(
        tmp_path / "hub.toml",
        upstream={
            "url": fake.url,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
            "probe_interval": 0.2,
            "timeout": 2.0,
            "connect_timeout": 0.5,
            "batch_events": 50,
        },
    )
    hub = HubProcess(tmp_path / "data", config=cfg)
    acked: set[str] = set()
    flapper = fake.flap(0.7, 0.3)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(ROUNDS):
                hub.start()
                t_end = time.monotonic() + random.uniform(0.8, 1.6)
                while time.monotonic() < t_end:
                    events = make_events(random.choice((1, 20, 100)))
                    body, headers = mobile_request(events)
                    # Now and then an acknowledged batch comes again (a lost ack): it must go up once.
                    for _ in range(2 if random.random() < 0.1 else 1):
                        try:
                            async with http.post(hub.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
                                if r.status == 200:
                                    acked.update(e["mid"] for e in events)
                        except aiohttp.ClientError:
                            pass  # a pooled connection to the hub that was killed: not acknowledged, fine
                hub.kill()  # forwarding is in flight: the fake is flapping and the backlog is not empty
            flapper.cancel()
            fake.reset_faults()
            if fake.is_down:
                await fake.up()
            hub.start()
            deadline = time.monotonic() + 60
            backlog = -1
            while time.monotonic() < deadline and not (acked <= fake.mids and backlog == 0):
                await asyncio.sleep(0.1)
                async with http.get(hub.url + "/health") as r:
                    backlog = (await r.json())["backlog"]  # events stored but never acknowledged count too
    finally:
        hub.kill()
        flapper.cancel()
        await fake.stop()
    missing = acked - fake.mids
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events never reached upstream"
    con = sqlite3.connect(tmp_path / "data" / "hub.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM events WHERE delivered_at IS NULL").fetchone() == (0,)
    dupes = duplicate_rows(con)
    con.close()
    assert not dupes, f"the store holds these mids more than once: {dupes}"
    redelivered = upstream_duplicates(fake)
    assert not redelivered, redelivered
    # Duplicates upstream come only from batches in flight at a kill or a reset: each batch msgid is
    # reused on retry, so upstream's batch dedup would drop them.
    print(
        f"crash rounds {ROUNDS}: {len(acked)} acknowledged, {len(fake.received_mids) - len(fake.mids)} duplicate "
        f"deliveries (reused msgids), 0 lost"
    )
