"""`telemetry-hub device DID [--json]`: one device's story, from the running hub."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from ..words import ago, clock
from .client import error_text
from .common import client_for, remote_options

__all__ = ["add_commands", "story_text"]


def story_text(s: dict[str, Any], now: float) -> str:
    """The story in words, for branch IT at a terminal."""
    lines = [
        f"device {s['did']}",
        f"  last seen   {ago(s['last_seen'], now)} ({clock(s['last_seen'])})",
        f"  first seen  {ago(s['first_seen'], now)} ({clock(s['first_seen'])})",
        f"  received    {s['received']:,} events in {s['requests']:,} requests, {s['duplicates']:,} of them sent again",
        f"  on the hub  {s['stored']:,} events: {s['delivered']:,} delivered "
        f"(last {ago(s['last_delivered_at'], now)}), {s['waiting']:,} waiting for upstream",
        f"  refused     {s['dead_letters']:,} by upstream (dead letters), {s['quarantined_count']:,} quarantined",
    ]
    lines += [f"    {q['reason']}: {q['count']:,}" for q in s["quarantined"]]
    if s["addresses"]:
        lines.append(
            "  synced from " + ", ".join(f"{a['address']} ({ago(a['last_seen'], now)})" for a in s["addresses"])
        )
    days = " ".join(f"{d['received']}" for d in s["per_day"])
    lines.append(f"  events per day, last {len(s['per_day'])} days (oldest first): {days}")
    return "\n".join(lines)


def _cmd_device(args: argparse.Namespace) -> int:
    client = client_for(args)
    key = "q" if args.prefix else "did"
    status, answer = client.request("GET", f"/device.json?{urllib.parse.urlencode({key: args.did})}")
    if status == 404 and isinstance(answer, dict):
        print(f"telemetry-hub: {answer.get('error')}", file=sys.stderr)
        for m in answer.get("matches") or []:
            print(f"  {m['did']}  (last seen {ago(m['last_seen'], time.time())})", file=sys.stderr)
        return 1
    if status != 200 or not isinstance(answer, dict):
        print(f"device story refused ({status}): {error_text(answer)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else story_text(answer, time.time()))
    return 0


def add_commands(sub: Any) -> None:
    """Add `device` to the telemetry-hub command."""
    device = sub.add_parser(
        "device",
        help="one device's story: last sync, events here, delivered, waiting, quarantined",
        description="Ask the running hub what it knows of one device (its id is in the app's settings): "
        "when it last synced, how many of its events are here, delivered, waiting or quarantined and why.",
    )
    device.add_argument("did", help="the device id (context.did / X-Device-Id)")
    device.add_argument("--prefix", action="store_true", help="DID is the start of the id: find the device")
    remote_options(device)
    device.set_defaults(func=_cmd_device)
