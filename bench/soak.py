"""Soak test: steady device load and a flapping upstream for N minutes; does anything grow without bound?

Usage: python bench/soak.py --minutes 30 [--devices 20] [--rate 200] [--interval 60] [--retention-minutes 5]

The hub runs as a subprocess (its data in a temp dir), the upstream is the tests' fake Sunbird server
as a second subprocess (tests/support/upstream.py) driven through its control API: it flaps (up 20 s, down
8 s) and fails 5% of requests. Simulated devices (mobile, JS library and desktop envelopes, batches
of 1-50 events) send --rate events/s in total and keep a batch until it is acknowledged.

Every --interval seconds it prints the hub's RSS (and peak), open file descriptors, the highest
backlog seen in the interval (sampled every 5 s), database and WAL size, events acknowledged so far
and the ack latency percentiles of that interval. At the end it compares each figure's slope
over the last third of the run with the warm-up third and says which ones kept growing, then heals
the link, waits for the backlog to drain and checks that upstream got every acknowledged event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.events import desktop_request, js_request, make_events, mobile_request
from support.hubproc import HubProcess, free_port

PATH = "/api/data/v1/telemetry"
SAMPLE_S = 5.0


@dataclass
class Sample:
    t: float  # minutes since start
    rss_mib: float
    fds: int
    backlog: int
    db_mib: float
    wal_mib: float
    acked: int


@dataclass
class Load:
    acked: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)  # since the last report
    statuses: dict[object, int] = field(default_factory=dict)


def proc_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def size_mib(path: Path) -> float:
    try:
        return path.stat().st_size / 2**20
    except FileNotFoundError:
        return 0.0


def get_json(url: str, timeout: float = 10.0, data: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def device(
    http: aiohttp.ClientSession, url: str, did: str, rate: float, load: Load, stop: asyncio.Event, rng: random.Random
) -> None:
    """One device sending `rate` events/s on average; a batch is kept until the hub answers 200."""
    next_at = time.monotonic() + rng.random()
    pending = None
    while not stop.is_set():
        if pending is None:
            events = make_events(rng.choice((1, 5, 10, 20, 50)), did=did)
            kind = rng.choice(("mobile", "mobile", "js", "desktop"))
            body, headers = (
                mobile_request(events, did=did)
                if kind == "mobile"
                else js_request(events)
                if kind == "js"
                else desktop_request(events)
            )
            pending = ([e["mid"] for e in events], body, headers)
            next_at += len(events) / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
        mids, body, headers = pending
        started = time.monotonic()
        try:
            async with http.post(url + PATH, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as r:
                await r.read()
                status: object = r.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = type(exc).__name__
        load.statuses[status] = load.statuses.get(status, 0) + 1
        if status == 200:
            load.latencies.append(time.monotonic() - started)
            load.acked.update(mids)
            pending = None
        else:
            await asyncio.sleep(1.0)


def slope(samples: list[Sample], attr: str) -> float:
    """Least-squares slope of attr per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [s.t for s in samples]
    ys = [float(getattr(s, attr)) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


# figure, unit, absolute slope per minute below which it counts as flat
CHECKS = [
    ("rss_mib", "MiB", 1.0),
    ("fds", "fds", 0.5),
    ("backlog", "events", None),
    ("wal_mib", "MiB", 0.5),
    ("db_mib", "MiB", 1.0),
]


def verdict(samples: list[Sample], rate: float) -> list[str]:
    third = max(2, len(samples) // 3)
    warm, last = samples[:third], samples[-third:]
    out = []
    for attr, unit, flat in CHECKS:
        if flat is None:  # the backlog may hold a few minutes' worth while the link flaps
            flat = rate * 60 * 0.05
        w, late = slope(warm, attr), slope(last, attr)
        growing = late > flat and late > 0.25 * max(w, 0.0)
        out.append(
            f"  {attr:8} warm-up {w:+9.2f} {unit}/min, last third {late:+9.2f} {unit}/min -> "
            f"{'STILL GROWING' if growing else 'flat'}"
        )
    return out


async def soak(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    up_port, control_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "support" / "upstream.py"),
            "--port",
            str(up_port),
            "--control-port",
            str(control_port),
            "--quiet",
            "--no-record-events",
            "--fail-rate",
            "0.05",
            "--seed",
            "7",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert upstream.stdout is not None
    upstream.stdout.readline()  # "listening ..."
    control = f"http://127.0.0.1:{control_port}"
    get_json(control + "/_control", data=json.dumps({"flap": [args.flap_up, args.flap_down]}).encode())
    cfg = tmp / "hub.toml"
    cfg.write_text(
        f'[upstream]\nurl = "http://127.0.0.1:{up_port}"\nbackoff_initial = 0.5\nbackoff_max = 10.0\n'
        f'probe_interval = 2.0\n[store]\nmin_free_bytes = "100 MiB"\n'
        f"retention_days = {args.retention_minutes / 1440!r}\n[discovery]\nenabled = false\n"
    )
    hub = HubProcess(tmp / "data", config=cfg)
    hub.start()
    pid = hub.proc.pid
    db = hub.data_dir / "hub.db"
    print(
        f"soak: {args.minutes} min, {args.devices} devices, {args.rate} events/s, upstream flapping "
        f"{args.flap_up:g}s up / {args.flap_down:g}s down with 5% failures; hub pid {pid}, data in {tmp}",
        flush=True,
    )
    print(
        f"{'min':>5} {'RSS MiB':>8} {'HWM MiB':>8} {'fds':>5} {'backlog↑':>8} {'db MiB':>7} {'wal MiB':>7} "
        f"{'acked':>8} {'ack p50':>8} {'ack p99':>8}  answers",
        flush=True,
    )
    load, stop = Load(), asyncio.Event()
    samples: list[Sample] = []
    start = time.monotonic()
    per_device = args.rate / args.devices
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = [
            asyncio.create_task(device(http, hub.url, f"soak-{i:02d}", per_device, load, stop, random.Random(i)))
            for i in range(args.devices)
        ]
        next_report = start + args.interval
        reported = 0
        while time.monotonic() - start < args.minutes * 60:
            await asyncio.sleep(SAMPLE_S)
            try:
                backlog = (await asyncio.to_thread(get_json, hub.url + "/health"))["backlog"]
            except OSError:
                backlog = -1
            s = Sample(
                (time.monotonic() - start) / 60,
                proc_kib(pid, "VmRSS") / 1024,
                len(os.listdir(f"/proc/{pid}/fd")),
                backlog,
                size_mib(db),
                size_mib(Path(f"{db}-wal")),
                len(load.acked),
            )
            samples.append(s)
            if time.monotonic() >= next_report:
                next_report += args.interval
                lat, load.latencies = load.latencies, []
                peak_backlog = max(x.backlog for x in samples[reported:])
                reported = len(samples)
                print(
                    f"{s.t:5.1f} {s.rss_mib:8.1f} {proc_kib(pid, 'VmHWM') / 1024:8.1f} {s.fds:5d} {peak_backlog:8d} "
                    f"{s.db_mib:7.1f} {s.wal_mib:7.1f} {s.acked:8d} {pct(lat, 50) * 1000:6.0f}ms "
                    f"{pct(lat, 99) * 1000:6.0f}ms  {dict(sorted(load.statuses.items(), key=str))}",
                    flush=True,
                )
        stop.set()
        await asyncio.gather(*tasks)
    print("\ngrowth (least-squares slopes, first third vs last third of the run):")
    for line in verdict(samples, args.rate):
        print(line)
    # Heal the link and check the end-to-end promise.
    get_json(control + "/_control", data=b'{"reset_faults": true}')  # also ends the flapping, link up
    await asyncio.sleep(0.5)
    get_json(control + "/_control", data=b'{"down": false}')
    deadline = time.monotonic() + 120
    backlog = -1
    while time.monotonic() < deadline:
        backlog = get_json(hub.url + "/health")["backlog"]
        if backlog == 0:
            break
        await asyncio.sleep(1)
    upstream_mids = set(get_json(control + "/_state?mids=1", timeout=60)["mids"])
    lost = len(load.acked - upstream_mids)
    code = hub.terminate()
    con = sqlite3.connect(db)
    integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    stored = con.execute("SELECT count(*) FROM events").fetchone()[0]
    con.close()
    upstream.terminate()
    upstream.wait(10)
    print(
        f"\nend: {len(load.acked)} events acknowledged, {stored} stored, backlog {backlog} after healing the link, "
        f"{lost} acknowledged events missing upstream, integrity {integrity}, hub exit {code}"
    )
    ok = lost == 0 and integrity == "ok" and backlog == 0 and code == 0
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept the hub's data and log for a look: {tmp}")
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--rate", type=float, default=200.0, help="events per second, all devices together")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between report lines")
    ap.add_argument("--flap-up", type=float, default=20.0)
    ap.add_argument("--flap-down", type=float, default=8.0)
    ap.add_argument(
        "--retention-minutes",
        type=float,
        default=5.0,
        help="store.retention_days for the run, in minutes, so the database reaches its steady size",
    )
    args = ap.parse_args()
    socket.setdefaulttimeout(60)
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
