"""Forwarding benchmark: how fast the hub drains a backlog, and how soon a new event reaches upstream.

Usage: python bench/forward.py [--backlog 200000] [--rate 1000] [--seconds 20]

The upstream is the tests' fake Sunbird server (tests/support/upstream.py) running in this process; the hub
runs as a subprocess. Baseline = the same upstream fed the same 200-event gzip batches by a bare
client, one request in flight like the hub, so the hub's rate reads as a fraction of what the
upstream itself can take.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.events import make_events
from support.hubproc import HubProcess
from support.upstream import FakeUpstream

from hub.config import StoreConfig
from hub.store import Store
from hub.store.writes import insert_events


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        return json.loads(r.read())


async def fill_backlog(db: Path, n: int) -> None:
    """Create the hub's database and insert n pending events directly (fast, same schema)."""
    store = Store(db, StoreConfig())
    await store.open()
    await store.close()
    template = make_events(200)
    con = sqlite3.connect(db)
    now = int(time.time() * 1000)
    for start in range(0, n, 10_000):
        rows, raws = [], []
        for i in range(start, min(n, start + 10_000)):
            e = dict(template[i % 200])
            e["mid"] = f"bench:{uuid.uuid4().hex}"
            raws.append(json.dumps(e, separators=(",", ":")).encode())
            ctx = e["context"]
            rows.append(
                (e["mid"], ctx.get("did"), e["eid"], e["ets"], ctx.get("channel"), ctx["pdata"].get("id"), now, "bench")
            )
        insert_events(con, rows, raws, start + 1)  # the store's own insert, so the layout is the store's
        con.commit()
    con.close()


async def upstream_capacity(fake: FakeUpstream, batches: int) -> float:
    """Events/s the upstream takes from a bare client, one 200-event gzip batch in flight."""
    bodies = []
    for _ in range(batches):
        events = make_events(200)
        env = {"id": "ekstep.telemetry", "ver": "1.0", "params": {"msgid": str(uuid.uuid4())}, "events": events}
        bodies.append(gzip.compress(json.dumps(env, separators=(",", ":")).encode(), 5))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        for body in bodies:
            async with http.post(fake.url, data=body, headers=headers) as r:
                await r.read()
        return batches * 200 / (time.perf_counter() - t0)


async def drain(fake: FakeUpstream, n: int, tmp: Path) -> tuple[float, float, float, int]:
    """Seconds for a hub to deliver a backlog of n events; its peak RSS in MB, CPU seconds and bytes written to disk."""
    data = tmp / "drain"
    data.mkdir()
    await fill_backlog(data / "hub.db", n)
    hub = HubProcess(data, extra=["--upstream", fake.url])
    await asyncio.to_thread(hub.start)
    t0 = time.perf_counter()
    try:
        while len(fake.mids) < n:
            await asyncio.sleep(0.1)
            if time.perf_counter() - t0 > 600:
                raise SystemExit("backlog did not drain in 10 minutes")
        elapsed = time.perf_counter() - t0
        rss = 0.0
        for line in Path(f"/proc/{hub.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
        fields = Path(f"/proc/{hub.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, whole life
        # What the hub had the kernel write to disk (WAL, checkpoints): wear on a Pi's SD card.
        io = dict(line.split(": ") for line in Path(f"/proc/{hub.proc.pid}/io").read_text().splitlines())
        written = int(io["write_bytes"])
    finally:
        await asyncio.to_thread(hub.terminate)
    return elapsed, rss, cpu_s, written


async def latency(fake: FakeUpstream, rate: int, seconds: int, tmp: Path) -> list[float]:
    """Device ack -> upstream receipt, in seconds, at a steady `rate` events/s."""
    hub = HubProcess(tmp / "latency", extra=["--upstream", fake.url])
    await asyncio.to_thread(hub.start)
    acked: dict[str, float] = {}
    per_request = 20
    interval = per_request / rate
    try:
        async with aiohttp.ClientSession() as http:

            async def one(events: list[dict]) -> None:
                env = {
                    "id": "api.sunbird.telemetry",
                    "ver": "3.0",
                    "params": {"msgid": uuid.uuid4().hex},
                    "events": events,
                }
                async with http.post(
                    hub.url + "/api/data/v1/telemetry",
                    data=json.dumps(env, separators=(",", ":")).encode(),
                    headers={"Content-Type": "application/json"},
                ) as r:
                    await r.read()
                    if r.status == 200:
                        now = time.time()
                        for e in events:
                            acked[e["mid"]] = now

            pool = [make_events(per_request) for _ in range(int(seconds / interval) + 1)]
            tasks = []
            t_next = time.monotonic()
            for events in pool:
                tasks.append(asyncio.create_task(one(events)))
                t_next += interval
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
            await asyncio.gather(*tasks)
        deadline = time.monotonic() + 30
        while not set(acked) <= fake.mids and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(hub.terminate)
    received: dict[str, float] = {}
    for b in fake.batches:
        for m in b.mids:
            received.setdefault(m, b.received_at)
    return sorted(received[m] - t for m, t in acked.items() if m in received)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlog", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=1000, help="steady device events/s for the latency phase")
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    fake = FakeUpstream(record_events=False)
    await fake.start()
    try:
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            base = await upstream_capacity(fake, 300)
            fake.clear()
            print(f"upstream capacity (bare client, 1 batch of 200 in flight): {base:,.0f} events/s", flush=True)
            elapsed, rss, cpu_s, written = await drain(fake, args.backlog, tmp)
            rate = args.backlog / elapsed
            print(
                f"hub drains a backlog of {args.backlog:,} events: {rate:,.0f} events/s "
                f"({rate / base:.2f} of the upstream's capacity), peak RSS {rss:.0f} MB, "
                f"hub CPU {cpu_s / args.backlog * 1e6:.0f} us per event (start-up included), "
                f"{written / args.backlog / 1024:.1f} KiB written to disk per event",
                flush=True,
            )
            fake.clear()
            lat = await latency(fake, args.rate, args.seconds, tmp)
            if lat:
                p50 = statistics.median(lat)
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(
                    f"device ack -> upstream receipt at {args.rate} events/s for {args.seconds} s: "
                    f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms "
                    f"({len(lat):,} events)"
                )
    finally:
        await fake.stop()


if __name__ == "__main__":
    asyncio.run(main())
