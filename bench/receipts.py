"""Receipts benchmark: what `POST /api/data/v1/telemetry/receipts` costs a phone, with a big store behind it.

Usage: python bench/receipts.py [--events 1000000] [--mids 1000] [--requests 300]

A real hub (in this process, its own event loop and aiohttp server on 127.0.0.1) over a store filled
beforehand with `--events` events (half delivered, 0.1% dead letters, plus as many quarantined rows),
straight through SQLite with the hub's own schema (filling is not what is measured). Each request asks
about `--mids` mids: 90% in the store (of every kind), 10% unknown. In the same run, the baselines:
the same receipts against an empty store (what the store's size costs) and `GET /health` (what one HTTP
round trip to the hub costs at all). The figures read as ratios; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.hubs import hub_config

from hub.app import Hub
from hub.store.migrations import _MIGRATIONS

_RAW = b'{"eid":"LOG","ver":"3.0","edata":{"type":"system","level":"INFO","message":"x"}}' + b" " * 900


def fill(db: Path, n: int) -> list[str]:
    """A store of n events made with the hub's schema; returns a sample of its mids (every kind)."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA auto_vacuum=INCREMENTAL")
    for i, step in enumerate(_MIGRATIONS, 1):
        con.execute("BEGIN")
        for stmt in step.split(";"):
            if stmt.strip():
                con.execute(stmt)
        con.execute(f"PRAGMA user_version={i}")
        con.execute("COMMIT")
    rng = random.Random(1)
    sample: list[str] = []
    now = int(time.time() * 1000)
    chunk = 50_000
    for start in range(0, n, chunk):
        rows, raws, dead, junk = [], [], [], []
        for seq in range(start + 1, min(n, start + chunk) + 1):
            mid = str(uuid.UUID(int=rng.getrandbits(128)))
            if seq % 1000 == 0:  # a dead letter, not in events
                dead.append((mid, "dev", "LOG", 1.0, now, "api", _RAW, "upstream answered 400", now))
            else:
                delivered = now if seq % 2 else None
                rows.append((seq, mid, "dev", "LOG", 1.0, "ch", "app", now, "api", delivered))
                raws.append((seq, _RAW))
            if seq % 1000 == 500:
                junk.append((now, "api", "dev", f"q-{mid}", "event 0 has no 'eid' string", b"{}", 2))
            if rng.random() < 0.01:
                sample.append(mid)
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO events (seq, mid, did, eid, ets, channel, pdata_id, received_at, source, delivered_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        con.executemany("INSERT INTO event_raw (seq, raw) VALUES (?,?)", raws)
        con.executemany(
            "INSERT INTO dead_letter (mid, did, eid, ets, received_at, source, raw, reason, failed_at)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            dead,
        )
        con.executemany(
            "INSERT INTO quarantine (received_at, source, did, mid, reason, raw, size) VALUES (?,?,?,?,?,?,?)", junk
        )
        sample += [d[0] for d in dead[:5]] + [j[3] for j in junk[:5]]
        con.execute("COMMIT")
    con.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('stored', ?)", (n,))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return list(dict.fromkeys(sample))  # a dead letter's mid may also be in the 1% sample


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def measure(
    http: aiohttp.ClientSession, url: str, asks: list[list[str]] | None, requests: int
) -> tuple[float, float, int]:
    """(p50, p99) in ms over `requests` calls, one at a time (a phone asks once after its sync)."""
    times: list[float] = []
    answered = 0
    for i in range(requests):
        started = time.perf_counter()
        if asks is None:
            async with http.get(url + "/health") as r:
                await r.read()
        else:
            async with http.post(url + "/api/data/v1/telemetry/receipts", json={"mids": asks[i % len(asks)]}) as r:
                body = await r.json()
                assert r.status == 200, body
                answered += sum(len(v) for v in body["result"].values())
        times.append((time.perf_counter() - started) * 1000)
    return pct(times, 0.5), pct(times, 0.99), answered


async def run_hub(data: Path, asks: list[list[str]] | None, requests: int) -> tuple[float, float, int]:
    hub = Hub(hub_config(data))
    await hub.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{hub.port}"
            await measure(http, url, asks, 10)  # warm the connection and the page cache
            return await measure(http, url, asks, requests)
    finally:
        await hub.stop()


def asks_from(sample: list[str], n_mids: int, count: int) -> list[list[str]]:
    rng = random.Random(2)
    out = []
    for _ in range(count):
        known = rng.sample(sample, min(len(sample), n_mids * 9 // 10))
        out.append(known + [str(uuid.uuid4()) for _ in range(n_mids - len(known))])
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--mids", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the hub's start-up lines are not the figures
    with tempfile.TemporaryDirectory(prefix="bench-receipts-") as tmp:
        big, empty = Path(tmp) / "big", Path(tmp) / "empty"
        (big / "data").mkdir(parents=True)
        started = time.monotonic()
        sample = fill(big / "data" / "hub.db", args.events)
        size = (big / "data" / "hub.db").stat().st_size
        print(f"store: {args.events:,} events, {size / 2**20:.0f} MiB, filled in {time.monotonic() - started:.0f} s")
        asks = asks_from(sample, args.mids, 20)
        health = await run_hub(empty, None, args.requests)
        small = await run_hub(empty, asks, args.requests)
        large = await run_hub(big, asks, args.requests)
    print(f"{'':38} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'GET /health (one round trip)':38} {health[0]:8.2f} {health[1]:8.2f}")
    print(f"{f'receipts, {args.mids} mids, empty store':38} {small[0]:8.2f} {small[1]:8.2f}")
    print(f"{f'receipts, {args.mids} mids, {args.events:,} events':38} {large[0]:8.2f} {large[1]:8.2f}")
    print(
        f"p99 ratios: big store / empty store {large[1] / small[1]:.2f}, "
        f"big store / one round trip {large[1] / health[1]:.1f}"
    )
    print(f"mids answered per request: {large[2] // args.requests} (every one asked, in exactly one list)")


if __name__ == "__main__":
    asyncio.run(main())
