"""What every command shares: finding the hub, the config with overrides, logging, the client to a hub.

Every command finds its hub the same way, first match wins:
  config file:     --config, then $TELEMETRY_HUB_CONFIG, then /etc/telemetry-hub/config.toml (the
                   system install), else the built-in defaults;
  data directory:  --data-dir, then $TELEMETRY_HUB_DATA_DIR, then server.data_dir in that config, then
                   $STATE_DIRECTORY (under systemd), then /var/lib/telemetry-hub when it holds a hub
                   (not for `run`), then ./telemetry-hub-data;
  the hub's URL:   --url, else the address and port that config gives.
$TELEMETRY_HUB_SYSTEM_ROOT puts the system install's paths under another root (tests, chroots).
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import urllib.parse
from pathlib import Path

from .. import secrets
from ..config import Config, load
from ..errors import ConfigError
from ..tls import local_fingerprint
from .client import HubClient, hub_url, local_url

__all__ = ["client_for", "config_from", "locate", "remote_options", "setup_logging"]


def _system(path: str) -> Path:
    root = os.environ.get("TELEMETRY_HUB_SYSTEM_ROOT", "")
    return Path(root + path) if root else Path(path)


def _config_file(args: argparse.Namespace, tried: list[str]) -> str | None:
    if getattr(args, "config", None):
        return str(args.config)
    tried.append("--config (not given)")
    env = os.environ.get("TELEMETRY_HUB_CONFIG", "").strip()
    if env:
        return env
    tried.append("$TELEMETRY_HUB_CONFIG (not set)")
    system = _system("/etc/telemetry-hub/config.toml")
    if system.is_file():
        return str(system)
    tried.append(f"{system} (not there)")
    return None


def _data_dir(args: argparse.Namespace, cfg: Config, tried: list[str]) -> str | None:
    """The data directory to impose on cfg, or None to keep what cfg derives."""
    if getattr(args, "data_dir", None) is not None:
        return str(args.data_dir)
    env = os.environ.get("TELEMETRY_HUB_DATA_DIR", "").strip()
    if env:
        return env
    tried.append("$TELEMETRY_HUB_DATA_DIR (not set)")
    if cfg.server.data_dir or os.environ.get("STATE_DIRECTORY") or args.command == "run":
        return None  # the config's own choice (or systemd's) stands; `run` never borrows the system install's
    system = _system("/var/lib/telemetry-hub")
    if (system / "hub.db").exists():
        return str(system)
    tried.append(f"{system} (no hub there)")
    tried.append("./telemetry-hub-data")
    return None


def locate(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The config for this command (see the module's docstring) and, for error messages, what was tried."""
    tried: list[str] = []
    path = _config_file(args, tried)
    cfg = load(path)
    data_dir = _data_dir(args, cfg, tried)
    if data_dir is not None and data_dir != cfg.server.data_dir:
        cfg = cfg.replace("server", data_dir=data_dir)
    return cfg, tried


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
    """The config found by `locate`, with this command's overrides (--host, --port, --upstream, ...)."""
    cfg, _ = locate(args)
    server: dict[str, object] = {}
    if getattr(args, "host", None) is not None:
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if server:
        cfg = cfg.replace("server", **server)
    if getattr(args, "upstream", None) is not None:
        cfg = cfg.replace("upstream", url=args.upstream)
    if getattr(args, "no_discovery", False):
        cfg = cfg.replace("discovery", enabled=False)
    return cfg


def client_for(args: argparse.Namespace, cfg: Config | None = None) -> HubClient:
    """A client for --url (or the hub the config describes) carrying the admin token (see hub.secrets)."""
    found, tried = locate(args)  # once: the config, and what was tried for the error messages
    cfg = cfg or found
    url = getattr(args, "url", None)
    token = secrets.admin_token(cfg, getattr(args, "token", None))
    hint = ""
    if not url:
        hint = f"looked for this machine's hub in {'; '.join(tried)}" if tried else ""
    if not token:
        hint += (
            ("; " if hint else "")
            + f"found no admin token (looked in {secrets.admin_token_source(cfg)}): give --token or run as a user "
            "who can read it (sudo)"
        )
    pin = ""
    target = hub_url(url or local_url(cfg))
    host = urllib.parse.urlsplit(target).hostname or ""
    if cfg.tls.enabled and target.startswith("https://") and (not url or host in ("localhost", "127.0.0.1", "::1")):
        try:
            pin = local_fingerprint(cfg.tls, cfg.data_dir)  # this machine's hub: check it is really that one
        except ConfigError:
            if not url:
                raise
    return HubClient(target, token, hint=hint, pin=pin)


def remote_options(p: argparse.ArgumentParser) -> None:
    """--url, --token and --json for commands that talk to a running hub."""
    p.add_argument("--url", help="the hub's URL (default: the one the local config describes)")
    p.add_argument(
        "--token",
        help="admin token (default: auth.admin_token_file, else $TELEMETRY_HUB_ADMIN_TOKEN, "
        "else <data_dir>/admin-token)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
