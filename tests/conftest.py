"""Fixtures that start real parts: an in-process hub on 127.0.0.1 with a real SQLite file."""

from __future__ import annotations

import sqlite3
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.config import Config, from_dict
from netns import Lab, NetnsUnavailable
from upstream import FakeUpstream


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


@pytest.fixture
async def start_hub(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: start a real hub with config overrides; every hub started is stopped."""
    hubs: list[Hub] = []

    async def go(**sections: dict[str, Any]) -> RunningHub:
        hub = Hub(hub_config(tmp_path, **sections))
        await hub.start()
        hubs.append(hub)
        return RunningHub(hub)

    yield go
    while hubs:
        await hubs.pop().stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client (auto_decompress off so gzip bodies go out as given)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A real, fault-injecting Sunbird upstream on 127.0.0.1 (seeded, so faults repeat)."""
    fake = FakeUpstream(seed=7)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Network namespaces for real multicast tests (root only; CI must not skip them)."""
    try:
        Lab.check()
    except NetnsUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the multicast tests, but: {exc}")
        pytest.skip(str(exc))
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
