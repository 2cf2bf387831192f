"""A small HTTP client for CLI commands that talk to a running hub (sync, status, dead letters)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .config import Config
from .errors import HubError

__all__ = ["HubClient", "local_url", "admin_token"]


def local_url(cfg: Config) -> str:
    """The URL of the hub the local config describes."""
    host = cfg.server.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.server.port}"


def admin_token(cfg: Config, given: str | None = None) -> str:
    """The admin token: --token, $TELEMETRY_HUB_ADMIN_TOKEN, auth.admin_token_file, or <data_dir>/admin-token."""
    if given:
        return given
    env = os.environ.get("TELEMETRY_HUB_ADMIN_TOKEN", "").strip()
    if env:
        return env
    path = Path(cfg.auth.admin_token_file) if cfg.auth.admin_token_file else cfg.data_dir / "admin-token"
    try:
        return path.read_text("utf-8").strip()
    except OSError:
        return ""


class HubClient:
    """JSON over HTTP to one hub, with errors turned into sentences for branch IT."""

    def __init__(self, url: str, token: str = "", timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON answer)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"error": raw[:300].decode("utf-8", "replace")}
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HubError(f"cannot reach the hub at {self.url} ({reason}); is it running? "
                           "(`systemctl status telemetry-hub`, or pass --url)") from None


def error_text(answer: Any) -> str:
    """The human part of an error answer (Sunbird errmsg or a plain message)."""
    if isinstance(answer, dict):
        params = answer.get("params")
        if isinstance(params, dict) and params.get("errmsg"):
            return str(params["errmsg"])
        for key in ("error", "message"):
            if answer.get(key):
                return str(answer[key])
    return str(answer)
