"""The `telemetry-hub` command: run the hub, and talk to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
import os
import sys
from typing import TYPE_CHECKING

from .config import Config, load
from .errors import ConfigError, HubError

if TYPE_CHECKING:
    from .client import HubClient

__all__ = ["main"]

log = logging.getLogger("hub.cli")


def setup_logging(level: str) -> None:
    """One line per event; journald adds its own timestamps, a terminal gets ours."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"line": {"format": fmt}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}},
            "root": {"handlers": ["stderr"], "level": level.upper()},
            # APScheduler logs every job run at INFO: a probe every few seconds would flood the journal.
            # aiosqlite logs every statement at DEBUG: unreadable even when debugging the hub.
            "loggers": {"aiohttp.access": {"level": "WARNING"}, "apscheduler": {"level": "WARNING"},
                        "aiosqlite": {"level": "INFO"}},
        }
    )


def _config(args: argparse.Namespace) -> Config:
    cfg = load(args.config)
    server: dict[str, object] = {}
    if getattr(args, "host", None) is not None:
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if getattr(args, "data_dir", None) is not None:
        server["data_dir"] = args.data_dir
    if server:
        cfg = cfg.replace("server", **server)
    if getattr(args, "upstream", None) is not None:
        cfg = cfg.replace("upstream", url=args.upstream)
    if getattr(args, "no_discovery", False):
        cfg = cfg.replace("discovery", enabled=False)
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from .app import Hub

    cfg = _config(args)
    setup_logging(cfg.server.log_level)
    hub = Hub(cfg)
    asyncio.run(hub.run())
    return 0


def _client(args: argparse.Namespace) -> "HubClient":
    from .client import HubClient, admin_token, local_url

    cfg = load(args.config)
    return HubClient(args.url or local_url(cfg), admin_token(cfg, getattr(args, "token", None)))


def _cmd_sync(args: argparse.Namespace) -> int:
    from .client import error_text

    client = _client(args)
    status, answer = client.request("POST", f"/admin/sync?timeout={args.timeout:g}", timeout=args.timeout + 10)
    if status != 200:
        print(f"sync refused ({status}): {error_text(answer)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"delivered {answer['delivered']} events; {answer['backlog']} still waiting; link {answer.get('link')}")
        if answer.get("error"):
            print(f"last error: {answer['error']}")
    return 0 if answer.get("ok") else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from .client import error_text
    from .status import format_text

    client = _client(args)
    status, answer = client.request("GET", "/status.json", timeout=args.timeout)
    if status != 200 or not isinstance(answer, dict) or "state" not in answer:
        print(f"status refused ({status}): {error_text(answer)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else format_text(answer, client.url))
    return 0 if answer.get("healthy") else 1


def _cmd_dead_letter(args: argparse.Namespace) -> int:
    from .client import error_text

    client = _client(args)
    if args.action == "list":
        status, answer = client.request("GET", f"/admin/dead-letters?limit={args.limit}")
    elif args.all:
        status, answer = client.request("POST", "/admin/dead-letters/requeue", {"all": True})
    elif args.mids:
        status, answer = client.request("POST", "/admin/dead-letters/requeue", {"mids": args.mids})
    else:
        print("say which: --all, or one or more mids", file=sys.stderr)
        return 2
    if status != 200:
        print(f"refused ({status}): {error_text(answer)}", file=sys.stderr)
        return 1
    if args.json or args.action != "list":
        print(json.dumps(answer, indent=2) if args.json else f"re-queued {answer['requeued']} events for upstream")
        return 0
    print(f"{answer['total']} dead letters (events upstream refused); newest first:")
    for item in answer["items"]:
        print(f"  {item['mid']}  {item['eid']}  {item['reason']}")
    return 0


def _cmd_discover(args: argparse.Namespace) -> int:
    from .discovery import find_hubs, local_urls
    from .ingest import DEVICE_PATHS

    if args.self:
        cfg = load(args.config)
        urls = local_urls(cfg.server.port, DEVICE_PATHS[0])
        if cfg.tls.enabled:
            urls += local_urls(cfg.tls.port, DEVICE_PATHS[0], "https")
        if args.json:
            print(json.dumps(urls, indent=2))
        else:
            print("This hub's telemetry URL on each of its addresses (give one to a device that cannot use mDNS):")
            for url in urls or ["(no network address yet)"]:
                print(f"  {url}")
        return 0 if urls else 1
    hubs = asyncio.run(find_hubs(args.timeout))
    if args.json:
        print(json.dumps([{"name": h.name, "addresses": list(h.addresses), "port": h.port,
                           "properties": h.properties, "urls": h.urls()} for h in hubs], indent=2))
        return 0 if hubs else 1
    if not hubs:
        print(f"no telemetry hub answered on this network within {args.timeout:g} s "
              "(multicast may be blocked; try `telemetry-hub discover --self` on the hub)")
        return 1
    for h in hubs:
        p = h.properties
        print(f"{h.name}")
        print(f"  branch {p.get('name', '?')}  hub id {p.get('hub', '?')}  "
              f"key needed: {'yes' if p.get('auth') == '1' else 'no'}")
        if p.get("tls"):
            print(f"  TLS certificate SHA-256: {p['tls']}")
        for url in h.urls():
            print(f"  {url}")
    return 0


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the hub's URL (default: the one the local config describes)")
    p.add_argument("--token", help="admin token (default: $TELEMETRY_HUB_ADMIN_TOKEN or <data_dir>/admin-token)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telemetry-hub", description="Sunbird telemetry hub for a school branch")
    p.add_argument("--config", "-c", default=os.environ.get("TELEMETRY_HUB_CONFIG") or None, help="TOML config file (optional)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the hub (until SIGTERM / Ctrl+C)")
    run.add_argument("--config", "-c", default=argparse.SUPPRESS, help="TOML config file (optional)")
    run.add_argument("--host", help="address to listen on (overrides server.host)")
    run.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    run.add_argument("--data-dir", help="state directory (overrides server.data_dir)")
    run.add_argument("--upstream", help="upstream Sunbird URL (overrides upstream.url)")
    run.add_argument("--no-discovery", action="store_true", help="do not announce the hub over mDNS")
    run.set_defaults(func=_cmd_run)

    sync = sub.add_parser("sync", help="deliver to upstream now and report the outcome")
    _remote(sync)
    sync.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the outcome")
    sync.set_defaults(func=_cmd_sync)

    status = sub.add_parser("status", help="how the running hub is doing (exit status 1 unless healthy)",
                            description="Ask the running hub how it is doing. Exit status: 0 healthy, "
                                        "1 unhealthy (the reasons are printed) or unreachable.")
    _remote(status)
    status.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the hub's answer")
    status.set_defaults(func=_cmd_status)

    disc = sub.add_parser("discover", help="list the telemetry hubs on this network (mDNS), or this hub's URLs")
    disc.add_argument("--timeout", type=float, default=3.0, help="seconds to listen")
    disc.add_argument("--self", action="store_true", help="print this hub's own URLs instead (no mDNS)")
    disc.add_argument("--json", action="store_true", help="machine-readable output")
    disc.set_defaults(func=_cmd_discover)

    dead = sub.add_parser("dead-letter", help="list or re-queue events upstream refused")
    dead.add_argument("action", choices=["list", "requeue"])
    dead.add_argument("mids", nargs="*", help="mids to re-queue")
    dead.add_argument("--all", action="store_true", help="re-queue every dead letter")
    dead.add_argument("--limit", type=int, default=100)
    _remote(dead)
    dead.set_defaults(func=_cmd_dead_letter)

    from .imports import add_cli_commands as add_share_commands

    add_share_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; config problems exit 2 with the key named."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"telemetry-hub: configuration error: {exc}", file=sys.stderr)
        return 2
    except HubError as exc:
        print(f"telemetry-hub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
