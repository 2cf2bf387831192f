"""The hub under systemd's eyes: READY after the port listens, watchdog pings, STOPPING, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import threading
import time

import aiohttp
import pytest
from support.events import make_events, mobile_request
from support.hubproc import HubProcess


def _listen(sock: socket.socket, got: list[tuple[float, str, bool]], port: int, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        # At the moment READY arrives, is the port already accepting connections?
        accepting = False
        if "READY=1" in data:
            with socket.socket() as probe:
                accepting = probe.connect_ex(("127.0.0.1", port)) == 0
        got.append((time.monotonic(), data, accepting))


@pytest.mark.slow
def test_sd_notify_ready_watchdog_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    hub = HubProcess(tmp_path / "data", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": None})
    port = hub.port
    got: list[tuple[float, str, bool]] = []
    stop = threading.Event()
    t = threading.Thread(target=_listen, args=(sock, got, port, stop), daemon=True)
    t.start()
    try:
        hub.start()
        deadline = time.monotonic() + 20
        while not any("READY=1" in d for _, d, _ in got) and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = [g for g in got if "READY=1" in g[1]]
        assert ready, f"no READY=1 (got {got})"
        assert ready[0][2], "READY=1 was sent before the port accepted connections"
        assert "STATUS=" in ready[0][1] and "events waiting for upstream" in ready[0][1]
        time.sleep(1.5)
        pings = [g for g in got if "WATCHDOG=1" in g[1]]
        assert len(pings) >= 4, f"watchdog pings: {len(pings)} in 1.5 s at a 0.2 s interval"
        assert hub.terminate(30) == 0
        time.sleep(0.3)
        assert any("STOPPING=1" in d for _, d, _ in got), "no STOPPING=1 on SIGTERM"
    finally:
        stop.set()
        hub.kill()
        sock.close()


@pytest.mark.slow
async def test_sigterm_answers_every_request_in_flight(tmp_path):
    hub = HubProcess(tmp_path / "data")
    hub.start()
    results: list[tuple[int | None, list[str]]] = []

    async def slow_client(i: int, http: aiohttp.ClientSession) -> None:
        events = make_events(50, did=f"drain-{i}")
        body, headers = mobile_request(events)

        async def trickle():
            yield body[: len(body) // 2]
            await asyncio.sleep(1.0)  # SIGTERM lands while the body is still arriving
            yield body[len(body) // 2 :]

        try:
            async with http.post(hub.url + "/api/data/v1/telemetry", data=trickle(), headers=headers) as r:
                await r.read()
                results.append((r.status, [e["mid"] for e in events]))
        except aiohttp.ClientError:
            results.append((None, [e["mid"] for e in events]))

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(slow_client(i, http)) for i in range(20)]
        await asyncio.sleep(0.5)
        assert hub.proc is not None
        hub.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*clients)
    code = await asyncio.to_thread(hub.proc.wait, 30)
    assert code == 0, hub.log()
    statuses = [s for s, _ in results]
    assert statuses == [200] * 20, f"answers to requests in flight at SIGTERM: {statuses}"
    con = sqlite3.connect(tmp_path / "data" / "hub.db")
    stored = {m for (m,) in con.execute("SELECT mid FROM events")}
    con.close()
    for _, mids in results:
        assert set(mids) <= stored


def test_port_in_use_is_explained_not_a_traceback(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        hub = HubProcess(tmp_path / "data")
        hub.port = port
        r = hub.run_to_exit()
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "server.port" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_damaged_database_is_explained(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "hub.db").write_bytes(b"this is not a database, " * 100)
    r = HubProcess(data).run_to_exit()
    assert r.returncode == 1 and "cannot open the database" in r.stderr and "move it aside" in r.stderr
    assert "Traceback" not in r.stderr
    assert (data / "hub.db").read_bytes().startswith(b"this is not a database")  # left as it was
