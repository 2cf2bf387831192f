"""The `telemetry-hub` command: run the hub, and talk to it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import sys

from .config import Config, load
from .errors import ConfigError, HubError

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
            "loggers": {"aiohttp.access": {"level": "WARNING"}},
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
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from .app import Hub

    cfg = _config(args)
    setup_logging(cfg.server.log_level)
    hub = Hub(cfg)
    asyncio.run(hub.run())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telemetry-hub", description="Sunbird telemetry hub for a school branch")
    p.add_argument("--config", "-c", default=os.environ.get("TELEMETRY_HUB_CONFIG"), help="TOML config file (optional)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the hub (until SIGTERM / Ctrl+C)")
    run.add_argument("--config", "-c", default=argparse.SUPPRESS, help="TOML config file (optional)")
    run.add_argument("--host", help="address to listen on (overrides server.host)")
    run.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    run.add_argument("--data-dir", help="state directory (overrides server.data_dir)")
    run.add_argument("--upstream", help="upstream Sunbird URL (overrides upstream.url)")
    run.set_defaults(func=_cmd_run)

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
