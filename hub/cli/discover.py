"""`discover`: the hubs on this network (mDNS), or this hub's own URLs for a device that cannot browse."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from ..config import SUNBIRD_PATH
from ..discovery import find_hubs, local_urls
from .common import config_from

__all__ = ["add_commands"]


def _cmd_discover(args: argparse.Namespace) -> int:
    if args.self:
        cfg = config_from(args)
        urls = local_urls(cfg.server.port, SUNBIRD_PATH)
        if cfg.tls.enabled:
            urls += local_urls(cfg.tls.port, SUNBIRD_PATH, "https")
        if args.json:
            print(json.dumps(urls, indent=2))
        else:
            print("This hub's telemetry URL on each of its addresses (give one to a device that cannot use mDNS):")
            for url in urls or ["(no network address yet)"]:
                print(f"  {url}")
        return 0 if urls else 1
    hubs = asyncio.run(find_hubs(args.timeout))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": h.name,
                        "addresses": list(h.addresses),
                        "port": h.port,
                        "properties": h.properties,
                        "urls": h.urls(),
                    }
                    for h in hubs
                ],
                indent=2,
            )
        )
        return 0 if hubs else 1
    if not hubs:
        print(
            f"no telemetry hub answered on this network within {args.timeout:g} s "
            "(multicast may be blocked; try `telemetry-hub discover --self` on the hub)"
        )
        return 1
    for h in hubs:
        p = h.properties
        print(f"{h.name}")
        print(
            f"  branch {p.get('name', '?')}  hub id {p.get('hub', '?')}  "
            f"key needed: {'yes' if p.get('auth') == '1' else 'no'}"
        )
        if p.get("tls"):
            print(f"  TLS certificate SHA-256: {p['tls']}")
        for url in h.urls():
            print(f"  {url}")
    return 0


def add_commands(sub: Any) -> None:
    """Add `discover` to the telemetry-hub command."""
    disc = sub.add_parser(
        "discover",
        help="list the telemetry hubs on this network (mDNS), or this hub's URLs",
        description="Listen for telemetry hubs announcing themselves on this network (mDNS / DNS-SD) and print "
        "their telemetry URLs; with --self, print this hub's own URLs to give a device that cannot browse.",
    )
    disc.add_argument("--timeout", type=float, default=3.0, help="seconds to listen")
    disc.add_argument("--self", action="store_true", help="print this hub's own URLs instead (no mDNS)")
    disc.add_argument("--json", action="store_true", help="machine-readable output")
    disc.set_defaults(func=_cmd_discover)
