"""Ingest benchmark: the hub against a do-nothing baseline server, same load, same run.

Usage: python bench/ingest.py [--clients 50] [--batch-requests 1500] [--single-requests 20000]

The load comes from this process; the hub and the baseline each run as their own subprocess on
127.0.0.1. The baseline is an aiohttp handler that reads, gunzips and parses the body and answers
200 without storing anything, so the hub's figures read as a ratio of what aiohttp itself allows.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.events import make_events
from support.hubproc import free_port

BASELINE = r"""
import gzip, json, sys
from aiohttp import web
async def handle(request):
    body = await request.read()
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    doc = json.loads(body)
    return web.json_response({"id": "api.telemetry", "ver": "1.0", "params": {"status": "successful"},
                              "responseCode": "SUCCESS", "result": {"received": len(doc["events"])}})
app = web.Application(client_max_size=50 * 2**20)
app.router.add_post("/api/data/v1/telemetry", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            handler_args={"auto_decompress": False})
"""


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_bodies(n_requests: int, batch: int, gz: bool) -> list[tuple[bytes, dict[str, str]]]:
    """Pre-built, distinct request bodies so the load process spends little CPU while measuring."""
    out = []
    for i in range(n_requests):
        events = make_events(batch, did=f"bench-{i % 500}")
        if gz:
            env = {
                "id": "ekstep.telemetry",
                "ver": "1.0",
                "ts": "2026-01-01T00:00:00Z",
                "events": events,
                "params": {"did": "d", "msgid": str(uuid.uuid4()), "key": "", "requesterId": ""},
            }
            body = gzip.compress(json.dumps(env, separators=(",", ":")).encode(), 1)
            headers = {
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "X-Device-Id": f"bench-{i % 500}",
            }
        else:
            env = {"id": "api.sunbird.telemetry", "ver": "3.0", "params": {"msgid": uuid.uuid4().hex}, "events": events}
            body = json.dumps(env, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
        out.append((body, headers))
    return out


async def drive(url: str, bodies: list[tuple[bytes, dict[str, str]]], clients: int, batch: int) -> dict[str, float]:
    """Send every body once from `clients` concurrent connections; report rates and latencies."""
    latencies: list[float] = []
    errors = 0
    it = iter(bodies)
    conn = aiohttp.TCPConnector(limit=clients)

    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as http:

        async def client() -> None:
            nonlocal errors
            for body, headers in it:
                t0 = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {
        "requests_per_s": n / elapsed,
        "events_per_s": n * batch / elapsed,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "errors": errors,
    }


def wait_up(url: str, proc: subprocess.Popen) -> None:
    import urllib.request

    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError as exc:
            if getattr(exc, "code", None):
                return  # an HTTP error answer means it is listening
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--batch-requests", type=int, default=1500, help="requests of 200 gzip events (mobile app)")
    ap.add_argument("--single-requests", type=int, default=20000, help="requests of 1 plain-JSON event")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="alternate baseline and hub this many times; the median ratio is reported "
        "(a shared 2-core machine drifts between runs)",
    )
    args = ap.parse_args()

    phases = [
        ("batch200-gzip", 200, True, args.batch_requests),
        ("single-plain", 1, False, args.single_requests),
    ]
    print(f"ingest benchmark: {args.clients} concurrent clients, load from a separate process, {os.cpu_count()} CPUs")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, batch, gz, n in phases:
        print(f"building {n} distinct {name} bodies ...", flush=True)
        bodies = build_bodies(n, batch, gz)
        results[name] = {}
        ratios = []
        for round_ in range(args.repeat):
            for server in ("baseline", "hub"):
                r = run_one(server, bodies, args.clients, batch)
                results[name][f"{server}-{round_}"] = r
                print(
                    f"  {name:14} {server:8} {r['events_per_s']:>9.0f} events/s {r['requests_per_s']:>7.0f} req/s "
                    f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  peak RSS {r['peak_rss_mb']:5.1f} MB"
                    f"  errors {r['errors']:.0f}",
                    flush=True,
                )
            ratios.append(
                results[name][f"hub-{round_}"]["events_per_s"] / results[name][f"baseline-{round_}"]["events_per_s"]
            )
        print(
            f"  {name:14} ratio hub/baseline per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"median {statistics.median(ratios):.2f}"
        )
    print(json.dumps(results, indent=1))


def run_one(server: str, bodies: list[tuple[bytes, dict[str, str]]], clients: int, batch: int) -> dict[str, float]:
    """Start one server (baseline or hub) as a subprocess, drive it, stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        if server == "baseline":
            cmd = [sys.executable, "-c", BASELINE, str(port)]
        else:
            cmd = [
                sys.executable,
                "-m",
                "hub",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                tmp,
                "--no-discovery",
            ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_up(f"http://127.0.0.1:{port}/health", proc)
            r = asyncio.run(drive(f"http://127.0.0.1:{port}/api/data/v1/telemetry", bodies, clients, batch))
            r["peak_rss_mb"] = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
    return r


if __name__ == "__main__":
    main()
