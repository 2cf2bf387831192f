"""Starting hubs for tests: configs, the in-process hub, and TOML config files for subprocess hubs.

One way each: ``InProcessHubs`` (behind the ``start_hub`` fixture) runs ``hub.app.Hub`` in the test's event
loop; ``support.hubproc.HubProcess`` runs ``python -m hub run`` with a config file from ``write_config``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hub.app import Hub
from hub.config import Config, from_dict

__all__ = ["InProcessHubs", "RunningHub", "hub_config", "write_config"]


def hub_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A test config: data under tmp_path, an ephemeral port on 127.0.0.1, mDNS off."""
    data: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0, "data_dir": str(tmp_path / "data")},
        "discovery": {"enabled": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(data)


class RunningHub:
    """A started Hub plus what a test needs to reach it."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.hub.port}"

    @property
    def db_path(self) -> Path:
        return self.hub.data_dir / "hub.db"

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the real SQLite file with a separate connection, as an outsider would."""
        con = sqlite3.connect(self.db_path)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


class InProcessHubs:
    """Starts real hubs in this event loop with config overrides, and stops every one it started."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._hubs: list[Hub] = []

    async def start(self, **sections: dict[str, Any]) -> RunningHub:
        hub = Hub(hub_config(self.tmp_path, **sections))
        await hub.start()
        self._hubs.append(hub)
        return RunningHub(hub)

    async def stop_all(self) -> None:
        while self._hubs:
            await self._hubs.pop().stop()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    """A hub TOML config file; mDNS is off unless a test turns it on (no multicast noise in tests)."""
    sections.setdefault("discovery", {"enabled": False})
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
