"""Fixtures only: real parts started for a test and stopped after it (the code lives in tests/support/)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.hubs import InProcessHubs, RunningHub
from support.netns import Lab, NetnsUnavailable
from support.stores import OpenStores
from support.upstream import FakeUpstream

from hub.store import Store


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "upstream_options(**kwargs): FakeUpstream arguments for the upstream fixture")


@pytest.fixture
async def start_hub(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningHub]]]:
    """Factory: start a real in-process hub with config overrides; every hub started is stopped."""
    hubs = InProcessHubs(tmp_path)
    try:
        yield hubs.start
    finally:
        await hubs.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client (auto_decompress off so gzip bodies go out and come back as given)."""
    async with aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


@pytest.fixture
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[FakeUpstream]:
    """A real, fault-injecting Sunbird upstream on 127.0.0.1 (seeded, so faults repeat).

    ``@pytest.mark.upstream_options(key=..., seed=..., fail_rate=...)`` passes FakeUpstream arguments.
    """
    marker = request.node.get_closest_marker("upstream_options")
    options: dict[str, Any] = {"seed": 7, **(marker.kwargs if marker else {})}
    fake = FakeUpstream(**options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Store]]]:
    """Factory: open a Store (default <tmp_path>/hub.db, default StoreConfig); all are closed afterwards."""
    stores = OpenStores(tmp_path)
    try:
        yield stores.open
    finally:
        await stores.close_all()


@pytest.fixture
async def store(open_store: Callable[..., Awaitable[Store]]) -> Store:
    """An opened hub.store.Store on <tmp_path>/hub.db with a default StoreConfig, closed afterwards."""
    return await open_store()


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
