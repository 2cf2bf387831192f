"""What every command shares: the config with command-line overrides, logging, the client to a hub."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os

from .. import secrets
from ..config import Config, load
from .client import HubClient, local_url

__all__ = ["client_for", "config_from", "remote_options", "setup_logging"]


def setup_logging(level: str) -> None:
    """One line per event; journald adds its own timestamps, a terminal gets ours."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"line": {"format": fmt}},
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
            },
            "root": {"handlers": ["stderr"], "level": level.upper()},
            # APScheduler logs every job run at INFO: a probe every few seconds would flood the journal.
            # aiosqlite logs every statement at DEBUG: unreadable even when debugging the hub.
            "loggers": {
                "aiohttp.access": {"level": "WARNING"},
                "apscheduler": {"level": "WARNING"},
                "aiosqlite": {"level": "INFO"},
            },
        }
    )


def config_from(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with this command's overrides (--host, --port, --data-dir, ...)."""
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


def client_for(args: argparse.Namespace, cfg: Config | None = None) -> HubClient:
    """A client for --url (or the hub the config describes) carrying the admin token (see hub.secrets)."""
    cfg = cfg or config_from(args)
    return HubClient(
        getattr(args, "url", None) or local_url(cfg), secrets.admin_token(cfg, getattr(args, "token", None))
    )


def remote_options(p: argparse.ArgumentParser) -> None:
    """--url, --token and --json for commands that talk to a running hub."""
    p.add_argument("--url", help="the hub's URL (default: the one the local config describes)")
    p.add_argument(
        "--token",
        help="admin token (default: auth.admin_token_file, else $TELEMETRY_HUB_ADMIN_TOKEN, "
        "else <data_dir>/admin-token)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
