"""A direct import (`telemetry-hub import --data-dir`) while the hub runs shows in its figures within seconds."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from support.hubproc import HubProcess
from support.sharefiles import build_archive, event_bytes

pytestmark = pytest.mark.slow  # a hub subprocess and a CLI subprocess


def _health(hub: HubProcess) -> dict:
    with urllib.request.urlopen(hub.url + "/health", timeout=5) as r:
        return json.loads(r.read())


async def test_a_direct_import_shows_in_health_within_seconds(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "data")
    await asyncio.to_thread(hub.start)
    try:
        before = await asyncio.to_thread(_health, hub)
        build_archive(tmp_path / "share.zip", [event_bytes(40, prefix="fresh-")])
        proc = await asyncio.create_subprocess_exec(
            *hub.command()[: hub.command().index("run")],
            "import",
            "--data-dir",
            str(hub.data_dir),
            str(tmp_path / "share.zip"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        imported = time.monotonic()
        while True:
            now = await asyncio.to_thread(_health, hub)
            if now["backlog"] == before["backlog"] + 40 and now["stored_total"] == before["stored_total"] + 40:
                break
            # The periodic recount runs every 30 s; the hub must notice the other process's commit sooner.
            assert time.monotonic() - imported < 5, (
                before["backlog"],
                now["backlog"],
                before["stored_total"],
                now["stored_total"],
                hub.log()[-1500:],
            )
            await asyncio.sleep(0.2)
    finally:
        hub.terminate()
