"""Flat memory: a hub with a backlog of 1,000,000 events forwards with RSS near an idle hub's."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from support.hubproc import HubProcess
from support.hubs import write_config

from hub.store.writes import insert_events

pytestmark = pytest.mark.slow  # a million-event backlog

BACKLOG = 1_000_000
FORWARD = 60_000  # enough batches to reach a steady state; memory must not depend on what remains


async def _fill(open_store, db: Path, n: int) -> None:
    """Create the hub's schema, then insert n small pending events straight into the file."""
    store = await open_store(db)
    await store.close()  # before writing the file from outside
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")  # test set-up only
    base = uuid.uuid4().hex[:16]
    for start in range(0, n, 50_000):
        span = range(start, min(n, start + 50_000))
        rows = [(f"{base}-{i}", "dev", "LOG", 1.0, "chan", "app", 0, "fill") for i in span]
        raws = [
            b'{"eid":"LOG","ets":1,"ver":"3.0","mid":"%s-%d","edata":{"type":"t","level":"INFO","message":"m"}}'
            % (base.encode(), i)
            for i in span
        ]
        insert_events(con, rows, raws, start + 1)  # the store's own insert, so the layout is the store's
        con.commit()
    con.close()


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


@pytest.mark.upstream_options(record_events=False)
async def test_forwarding_a_million_event_backlog_keeps_memory_flat(tmp_path, upstream, open_store):
    data = tmp_path / "data"
    data.mkdir()
    await _fill(open_store, data / "hub.db", BACKLOG)
    fake = upstream
    await fake.down()  # idle first: the link is down, nothing moves
    cfg = write_config(
        tmp_path / "hub.toml",
        upstream={"url": fake.url, "backoff_initial": 0.1, "backoff_max": 0.3, "probe_interval": 0.2},
    )
    hub = HubProcess(data, config=cfg)
    await asyncio.to_thread(hub.start)
    try:
        await asyncio.sleep(2.0)
        assert hub.proc is not None
        idle = _rss_mb(hub.proc.pid, "VmHWM")
        await fake.up()
        deadline = time.monotonic() + 120
        while len(fake.mids) < FORWARD and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert len(fake.mids) >= FORWARD, f"only {len(fake.mids)} delivered"
        peak = _rss_mb(hub.proc.pid, "VmHWM")
    finally:
        await asyncio.to_thread(hub.terminate)
        await fake.stop()
    print(f"backlog {BACKLOG:,}: idle peak RSS {idle:.1f} MB, peak while forwarding {FORWARD:,}: {peak:.1f} MB")
    assert peak - idle <= 20, f"RSS grew {peak - idle:.1f} MB while forwarding (idle {idle:.1f}, peak {peak:.1f})"
