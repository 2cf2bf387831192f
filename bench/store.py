"""Store benchmark: what the hub's SQLite store does on its own, with no HTTP, parsing or gzip.

Usage: python bench/store.py [--events 300000] [--group 25]

This is the ceiling under bench/ingest.py and bench/forward.py on the same machine: the store's
own schema, pragmas (WAL, synchronous=FULL) and writer, driven straight from Python.
- store: `group` concurrent requests of 200 ~1 KB events (what the mobile app sends) at a
  time, so each group commit holds about what it holds under bench/ingest.py's 50 clients;
- the peer: bare sqlite3 into a one-column table with the same durability, in the same run,
  to show what dedup by mid, routing indexes and bookkeeping cost;
- take and record: take_batch + the delivery record of the batch before it, 200 events a
  batch, as the forwarder does against an upstream that answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.events import make_events

from hub.config import StoreConfig
from hub.store import Store
from hub.telemetry import Checked, check_events, split_envelope


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


def bare_sqlite_rate(path: Path, batches: list[Checked], group: int) -> tuple[float, float]:
    """The peer: plain sqlite3 writing each event's bytes into a one-column table, `group` requests per
    transaction, WAL and synchronous=FULL: what durable SQLite costs before any bookkeeping of ours."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL)")
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(batches), group):
        con.execute("BEGIN IMMEDIATE")
        for b in batches[i : i + group]:
            con.executemany("INSERT INTO t (raw) VALUES (?)", [(e.raw,) for e in b.events])
        con.execute("COMMIT")
    con.close()
    n = sum(len(b.events) for b in batches)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


async def store_rate(path: Path, batches: list[Checked], group: int) -> tuple[float, float]:
    """Events/s and CPU us/event for storing every batch, `group` requests in flight at a time."""
    store = Store(path, StoreConfig())
    await store.open()
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
        rate, cpu = await store_rate(Path(tmp) / "a.db", batches, args.group)
        print(
            f"store, {args.group} requests of 200 in flight: {rate:,.0f} events/s, {cpu:.1f} us CPU per event",
            flush=True,
        )
        drained, dcpu = await drain_rate(Path(tmp) / "a.db", args.events)
        print(f"take + record batches of 200: {drained:,.0f} events/s, {dcpu:.1f} us CPU per event", flush=True)
        rate2, cpu2 = bare_sqlite_rate(Path(tmp) / "b.db", batches, args.group)
        print(
            f"peer, bare sqlite3 (one blob column, no dedup, no bookkeeping): {rate2:,.0f} events/s, "
            f"{cpu2:.1f} us CPU per event; the store does {rate / rate2:.2f}x of it",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
