"""hub.sdnotify against real unix datagram sockets, the way systemd listens."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from hub.sdnotify import Notifier, Watchdog, watchdog_interval


class Listener:
    """A bound AF_UNIX datagram socket plus a thread recording (monotonic time, message)."""

    def __init__(self, address: str) -> None:
        self.address = address  # as written into NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        with self._lock:
            return [m for _, m in self.messages]

    def times_of(self, text: str) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if m == text]

    def wait_for(self, text: str, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.texts():
                return
            time.sleep(0.01)
        raise AssertionError(f"{text!r} not received; got {self.texts()!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # sun_path is 108 bytes; very long tmp paths would not bind
        path = Path(tempfile.mkdtemp(prefix="sdn-")) / "notify.sock"
    listener = Listener(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch):
    address = f"@telemetry-hub-test-{uuid.uuid4().hex}"
    listener = Listener(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield listener
    listener.close()


def test_ready_status_stopping_arrive_on_path_socket(path_socket: Listener) -> None:
    n = Notifier()
    assert n.enabled
    assert n.ready()
    assert n.status("draining 12 events\nsecond line")
    assert n.stopping()
    assert n.notify(extend_timeout_usec=5_000_000, status="x")
    for text in (
        "READY=1",
        "STATUS=draining 12 events second line",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=5000000\nSTATUS=x",
    ):
        path_socket.wait_for(text)
    assert path_socket.texts()[:3] == ["READY=1", "STATUS=draining 12 events second line", "STOPPING=1"]
    n.close()


def test_abstract_namespace_socket(abstract_socket: Listener) -> None:
    n = Notifier()
    assert n.enabled
    assert n.ready(status="listening on :9001")
    assert n.watchdog()
    abstract_socket.wait_for("READY=1\nSTATUS=listening on :9001")
    abstract_socket.wait_for("WATCHDOG=1")
    n.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.stopping() is False
    assert n.watchdog() is False
    assert n._sock is None  # nothing was even opened
    assert Watchdog(n, interval=0.1).start() is None


async def test_watchdog_no_socket_start_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    wd = Watchdog(Notifier())
    assert not wd.enabled
    async with wd:
        assert not wd.running


def test_send_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert n.enabled
    with caplog.at_level(logging.DEBUG, logger="hub.sdnotify"):
        assert n.ready() is False
    assert any(r.levelno == logging.DEBUG and "failed" in r.getMessage() for r in caplog.records)
    n.close()


def test_watchdog_interval_from_env() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}) == pytest.approx(0.1)
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": pid}) == pytest.approx(0.1)
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "x"}) is None


async def test_watchdog_keeps_pinging(path_socket: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    wd = Watchdog(Notifier())
    assert wd.interval == pytest.approx(0.1)
    async with wd:
        assert wd.running
        await asyncio.sleep(0.65)
    assert not wd.running
    pings = path_socket.times_of("WATCHDOG=1")
    assert len(pings) >= 5, pings
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 0.3, gaps
    # stopped means stopped
    count = len(path_socket.times_of("WATCHDOG=1"))
    await asyncio.sleep(0.25)
    assert len(path_socket.times_of("WATCHDOG=1")) == count


@pytest.mark.slow
async def test_no_pings_while_event_loop_is_blocked(
    path_socket: Listener, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    block = 1.0

    async def hog() -> None:
        time.sleep(block)  # a blocking call on the loop: the bug the watchdog exists for

    async with Watchdog(Notifier()):
        await asyncio.sleep(0.35)
        before = len(path_socket.times_of("WATCHDOG=1"))
        assert before >= 2
        started = time.monotonic()
        await hog()
        ended = time.monotonic()
        await asyncio.sleep(0.35)

    pings = path_socket.times_of("WATCHDOG=1")
    assert not [t for t in pings if started < t < ended], "a ping arrived while the loop was blocked"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # The gap spans the whole block (small slack for receiver-thread timestamp jitter) ...
    assert max(gaps) >= block - 0.02, gaps
    # ... and pings resumed at the normal pace afterwards.
    assert len([t for t in pings if t > ended]) >= 2
    assert any("event loop was blocked" in r.getMessage() for r in caplog.records)


async def test_unhealthy_withholds_pings_and_warns_once(
    path_socket: Listener, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    state = {"ok": True}

    def healthy() -> bool:
        return state["ok"]

    caplog.set_level(logging.INFO, logger="hub.sdnotify")
    async with Watchdog(Notifier(), healthy=healthy):
        await asyncio.sleep(0.25)
        assert path_socket.times_of("WATCHDOG=1")
        state["ok"] = False
        await asyncio.sleep(0.05)
        t_sick = time.monotonic()
        await asyncio.sleep(0.5)
        t_well = time.monotonic()
        state["ok"] = True
        await asyncio.sleep(0.3)

    pings = path_socket.times_of("WATCHDOG=1")
    assert not [t for t in pings if t_sick < t < t_well], "pinged while unhealthy"
    assert [t for t in pings if t > t_well], "pings did not resume"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unhealthy" in r.getMessage()]
    assert len(warnings) == 1
    assert any("healthy again" in r.getMessage() for r in caplog.records)


async def test_health_check_exception_counts_as_unhealthy(
    path_socket: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    wd = Watchdog(Notifier(), interval=0.05, healthy=broken)
    async with wd:
        await asyncio.sleep(0.2)
    assert path_socket.times_of("WATCHDOG=1") == []
    assert any(r.levelno == logging.ERROR and "health check raised" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
