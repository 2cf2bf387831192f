"""The `telemetry-hub` command: its parser, and how every failure becomes one sentence and an exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .. import __version__
from ..errors import ConfigError, HubError
from . import device, discover, remote, share
from .common import config_from, setup_logging

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    from ..app import Hub

    cfg = config_from(args)
    setup_logging(cfg.server.log_level)
    os.umask(0o077)  # everything the hub creates (store, uploads, exports, keys) is private to its user
    asyncio.run(Hub(cfg).run())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telemetry-hub", description="Sunbird telemetry hub for a school branch")
    p.add_argument(
        "--config",
        "-c",
        default=None,
        help="TOML config file (default: $TELEMETRY_HUB_CONFIG, else /etc/telemetry-hub/config.toml if it exists)",
    )
    p.add_argument("--version", action="version", version=f"telemetry-hub {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the hub (until SIGTERM / Ctrl+C)")
    run.add_argument("--config", "-c", default=argparse.SUPPRESS, help="TOML config file (optional)")
    run.add_argument("--host", help="address to listen on (overrides server.host)")
    run.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    run.add_argument("--data-dir", help="state directory (overrides server.data_dir)")
    run.add_argument("--upstream", help="upstream Sunbird URL (overrides upstream.url)")
    run.add_argument("--no-discovery", action="store_true", help="do not announce the hub over mDNS")
    run.set_defaults(func=_cmd_run)

    remote.add_commands(sub)
    device.add_commands(sub)
    discover.add_commands(sub)
    share.add_commands(sub)
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
