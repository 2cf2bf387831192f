"""Store benchmark: what the hub's SQLite store does on its own, with no HTTP, parsing or gzip.

Usage: python bench/store.py [--events 300000] [--group 25]

This is the ceiling under bench/ingest.py and bench/forward.py on the same machine: the store's
own schema, pragmas (WAL, synchronous=FULL) and writer, driven straight from Python.
- store: `group` concurrent requests of 200 ~1 KB events (what the mobile app sends) at a
  time, so each group commit holds about what it holds under bench/ingest.py's 50 clients;
- same without the unique mid index, to show what duplicate detection costs;
- take and record: take_batch + the delivery record of the batch before it, 200 events a
  batch, as the forwarder does against an upstream that answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from events import make_events  # noqa: E402

from hub.config import StoreConfig  # noqa: E402
from hub.store import Store  # noqa: E402
from hub.telemetry import Checked, check_events, split_envelope  # noqa: E402


# The events table as schema v3 makes it, minus UNIQUE on mid (a copy for this comparison only).
_NO_MID_INDEX = """
DROP VIEW stored_events;
DROP TABLE events;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, mid TEXT NOT NULL, did TEXT, eid TEXT NOT NULL, ets REAL NOT NULL, channel TEXT,
    pdata_id TEXT, received_at INTEGER NOT NULL, source TEXT NOT NULL, batch_id INTEGER, delivered_at INTEGER
);
CREATE INDEX events_pending ON events(seq) WHERE delivered_at IS NULL;
CREATE INDEX events_delivered ON events(delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX events_route ON events(channel, pdata_id, seq) WHERE delivered_at IS NULL AND batch_id IS NULL;
CREATE INDEX events_batch ON events(batch_id, seq) WHERE delivered_at IS NULL AND batch_id IS NOT NULL;
"""


def requests(n_events: int) -> list[Checked]:
    """Checked 200-event requests with fresh mids, built before the clock starts."""
    template = make_events(200)
    out = []
    for _ in range(n_events // 200):
        events = []
        for e in template:
            e = dict(e)
            e["mid"] = str(uuid.uuid4())
            events.append(e)
        body = json.dumps({"id": "ekstep.telemetry", "ver": "1.0", "events": events}).encode()
        _, items = split_envelope(body)
        out.append(check_events(items, max_event_bytes=1 << 20, schema=None, strict=False))
    return out


async def store_rate(path: Path, batches: list[Checked], group: int, mid_index: bool) -> tuple[float, float]:
    """Events/s and CPU us/event for storing every batch, `group` requests in flight at a time."""
    store = Store(path, StoreConfig())
    await store.open()
    if not mid_index:
        # The same table without its unique mid index (a copy of the schema, not the hub's).
        await store.write(lambda conn: conn.executescript(_NO_MID_INDEX), transaction=False)
    try:
        queue = list(batches)
        t0, c0 = time.perf_counter(), time.process_time()

        async def client() -> None:
            while queue:
                await store.add(queue.pop(), source="bench")

        await asyncio.gather(*(client() for _ in range(group)))
        n = sum(len(b.events) for b in batches)
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    finally:
        await store.close()


async def drain_rate(path: Path, n: int) -> tuple[float, float]:
    """Events/s and CPU us/event for take_batch + recording the previous batch, until nothing waits."""
    store = Store(path, StoreConfig())
    await store.open()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        previous: list[int] = []
        taken_events = 0
        while True:
            taken = await store.take_batch(200, 4_000_000, delivered=previous)
            if taken.batch is None:
                break
            taken_events += len(taken.rows)
            previous = [taken.batch.id]
        assert taken_events == n, (taken_events, n)
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--group", type=int, default=25, help="200-event requests in flight at a time")
    args = ap.parse_args()
    print(f"store benchmark: {args.events:,} events of ~1 KB, {os.cpu_count()} CPUs; building requests ...", flush=True)
    batches = requests(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        rate, cpu = await store_rate(Path(tmp) / "a.db", batches, args.group, mid_index=True)
        print(f"store, {args.group} requests of 200 in flight: {rate:,.0f} events/s, {cpu:.1f} us CPU per event",
              flush=True)
        drained, dcpu = await drain_rate(Path(tmp) / "a.db", args.events)
        print(f"take + record batches of 200: {drained:,.0f} events/s, {dcpu:.1f} us CPU per event", flush=True)
        rate2, cpu2 = await store_rate(Path(tmp) / "b.db", batches, args.group, mid_index=False)
        print(f"store without the unique mid index (no duplicate detection): {rate2:,.0f} events/s, "
              f"{cpu2:.1f} us CPU per event ({rate / rate2:.2f} of it with the index)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
