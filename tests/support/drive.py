"""Helpers that drive a running hub in tests: send events, wait for a condition, fast retry timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from support.events import mobile_request

# Upstream timings that make retries, probes and backoff happen within a test's seconds.
FAST = {"backoff_initial": 0.05, "backoff_max": 0.4, "probe_interval": 0.2, "timeout": 1.0, "connect_timeout": 0.5}


async def send(http: Any, hub: Any, events: list[dict[str, Any]], did: str = "dev-1", status: int = 200) -> dict:
    """Post events as the mobile app does and check the answer's status; return its body."""
    body, headers = mobile_request(events, did=did)
    async with http.post(hub.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
        assert r.status == status, await r.text()
        return await r.json()


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll cond until true, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
