"""An mDNS debugging aid (advertise, browse, watch) that runs the hub's discovery code and nothing else."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import time
from typing import Any

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser

from ..discovery import DEFAULT_POLL_S, SERVICE_TYPE, Advertiser, FoundHub, browsing_zeroconf, find_hubs


def _hub_json(hub: FoundHub) -> dict[str, Any]:
    """FoundHub as plain JSON, with its URLs."""
    return {**dataclasses.asdict(hub), "urls": hub.urls()}


async def _until_signal() -> None:
    """Wait for SIGTERM or SIGINT."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


async def _advertise(args: argparse.Namespace) -> None:
    """Advertise until SIGTERM, then say goodbye."""
    props = dict(p.split("=", 1) for p in args.prop)
    adv = Advertiser(
        instance=args.instance,
        port=args.port,
        properties=props,
        interfaces=args.interface,
        poll_interval=args.poll_interval,
    )
    stopped = asyncio.create_task(_until_signal())
    await adv.start()
    registered = asyncio.create_task(adv.registered.wait())
    await asyncio.wait([stopped, registered], return_when=asyncio.FIRST_COMPLETED)
    if registered.done():
        print(f"registered {adv.name}", flush=True)
        await stopped
    registered.cancel()
    await adv.close()


async def _watch(args: argparse.Namespace) -> None:
    """Print a JSON line per browse event until SIGTERM."""

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        print(json.dumps({"event": state_change.name.lower(), "name": name, "t": time.time()}), flush=True)

    aiozc = await browsing_zeroconf(args.interface)
    if aiozc is None:
        raise SystemExit(1)
    browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        await _until_signal()
    finally:
        await browser.async_cancel()
        await aiozc.async_close()


async def _browse(args: argparse.Namespace) -> None:
    """Print the hubs found, as JSON or one per line."""
    hubs = await find_hubs(args.timeout, args.interface or None)
    if args.json:
        print(json.dumps([_hub_json(h) for h in hubs]), flush=True)
    for hub in [] if args.json else hubs:
        print(hub.name, " ".join(hub.urls()), flush=True)


def main() -> None:
    """`python -m hub.cli.mdns advertise|browse|watch`: mDNS on its own, for tests and troubleshooting."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--interface", action="append", default=[], help="name or address; repeatable")
    parser = argparse.ArgumentParser(prog="python -m hub.cli.mdns", description="mDNS debugging aid")
    sub = parser.add_subparsers(dest="cmd", required=True)
    adv = sub.add_parser("advertise", parents=[common], help="advertise until SIGTERM")
    adv.add_argument("--instance", required=True)
    adv.add_argument("--port", type=int, required=True)
    adv.add_argument("--prop", action="append", default=[], metavar="K=V")
    adv.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S)
    brw = sub.add_parser("browse", parents=[common], help="list hubs found within --timeout")
    brw.add_argument("--timeout", type=float, default=3.0)
    brw.add_argument("--json", action="store_true")
    sub.add_parser("watch", parents=[common], help="print added/removed events as JSON lines")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run({"advertise": _advertise, "browse": _browse, "watch": _watch}[ns.cmd](ns))


if __name__ == "__main__":
    main()
