"""A tiny, dependency-free client for systemd's sd_notify protocol.

systemd passes ``$NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for the
abstract namespace) to ``Type=notify`` services; the service sends newline
separated ``KEY=value`` datagrams to it (``READY=1``, ``STATUS=...``,
``STOPPING=1``, ``WATCHDOG=1``). Outside systemd the variable is unset and
every call here is a cheap no-op, so the hub can call these unconditionally.

Sending never raises into the caller: a failed send is logged at DEBUG and
reported as ``False``. The socket is non-blocking, so a stalled service
manager can never stall the event loop.

:class:`Watchdog` sends ``WATCHDOG=1`` from a coroutine on the hub's own event
loop, so the pings stop (and systemd restarts the hub) when the loop is
blocked, and it can also withhold them while a ``healthy()`` check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Notifier", "Watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)


def _socket_address(value: str | None) -> str | None:
    """The AF_UNIX address for a $NOTIFY_SOCKET value, or None when it is unusable."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    # systemd >= 254 may also hand out vsock:... addresses (VMs); not used on a Pi.
    log.debug("sd_notify: ignoring unsupported NOTIFY_SOCKET %r", value)
    return None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), or None when no watchdog applies.

    None when ``WATCHDOG_USEC`` is unset, invalid or zero, or when ``WATCHDOG_PID``
    is set to a PID other than ours (the watchdog was meant for another process).
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("sd_notify: ignoring invalid WATCHDOG_USEC %r", raw)
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.debug("sd_notify: ignoring invalid WATCHDOG_PID %r", pid)
            return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; does nothing when it is unset.

    ``Notifier()`` reads the environment; ``Notifier("/run/x.sock")`` or
    ``Notifier("@abstract")`` targets a given socket (tests).
    """

    def __init__(self, address: str | None = None, *, env: Mapping[str, str] | None = None) -> None:
        if address is None:
            address = (os.environ if env is None else env).get("NOTIFY_SOCKET")
        self._address = _socket_address(address)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a socket to send to (we run under systemd with Type=notify)."""
        return self._address is not None

    def notify(self, **fields: Any) -> bool:
        """Send one message made of ``KEY=value`` lines; True if it was handed to the socket.

        Keys are upper-cased (``notify(status="x", ready=1)`` sends ``STATUS=x`` and
        ``READY=1``); booleans become 1/0; newlines in values are replaced by spaces.
        """
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            if isinstance(value, bool):
                value = int(value)
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key.upper()}={text}")
        return self._send("\n".join(lines).encode("utf-8", "replace"))

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), optionally with a status line."""
        return self.notify(ready=1) if status is None else self.notify(ready=1, status=status)

    def status(self, text: str) -> bool:
        """Set the free-form status shown by ``systemctl status`` (``STATUS=...``)."""
        return self.notify(status=text)

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the hub is shutting down (``STOPPING=1``)."""
        return self.notify(stopping=1) if status is None else self.notify(stopping=1, status=status)

    def watchdog(self) -> bool:
        """Ping the service watchdog (``WATCHDOG=1``)."""
        return self.notify(watchdog=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (``EXTEND_TIMEOUT_USEC``), e.g. during a long drain."""
        return self.notify(extend_timeout_usec=max(0, int(seconds * 1_000_000)))

    def close(self) -> None:
        """Close the socket; a later send reopens it."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _send(self, data: bytes) -> bool:
        try:
            if self._address is None:
                return False
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self._address)
            return True
        except OSError as exc:  # socket gone, queue full (EAGAIN), seccomp, ...
            log.debug("sd_notify: sending %r to %r failed: %s", data[:80], self._address, exc)
            return False

    def __repr__(self) -> str:
        addr = None if self._address is None else self._address.replace("\0", "@", 1)
        return f"Notifier({addr!r})"


class Watchdog:
    """Pings the systemd watchdog from the event loop while the hub is healthy.

    The pings come from a coroutine that sleeps ``interval`` seconds between
    them, so they stop when the event loop is blocked; ``healthy()`` (if given)
    is asked before every ping and a False (or an exception) withholds the ping
    and logs one WARNING until it turns True again. When the watchdog is not
    enabled (no socket, no ``$WATCHDOG_USEC``) :meth:`start` does nothing.

    Use it as ``async with Watchdog(notifier, healthy=store.made_progress):`` or
    with :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float | None = None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval = watchdog_interval() if interval is None else interval
        self.healthy = healthy
        self._task: asyncio.Task[None] | None = None
        self._unhealthy = False

    @property
    def enabled(self) -> bool:
        """True when pings would go somewhere (socket set and an interval known)."""
        return self.notifier.enabled and self.interval is not None and self.interval > 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> asyncio.Task[None] | None:
        """Start the ping task on the running loop (idempotent); None when disabled."""
        if not self.enabled:
            return None
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="sd-watchdog")
        return self._task

    async def stop(self) -> None:
        """Stop pinging. Call it last on shutdown: pinging through the drain is harmless."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Ping now, then every ``interval`` seconds, until cancelled."""
        assert self.interval is not None and self.interval > 0
        loop = asyncio.get_running_loop()
        last = loop.time()
        self.tick()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            late = now - last - self.interval
            last = now
            if late > self.interval:
                log.warning(
                    "event loop was blocked for about %.1f s; systemd's watchdog restarts the hub "
                    "if that exceeds WatchdogSec",
                    late,
                )
            self.tick()

    def tick(self) -> bool:
        """Check health and ping once; True if a ping was sent."""
        ok = True
        if self.healthy is not None:
            try:
                ok = bool(self.healthy())
            except Exception:
                log.exception("watchdog health check raised; treating the hub as unhealthy")
                ok = False
        if not ok:
            if not self._unhealthy:
                self._unhealthy = True
                log.warning(
                    "hub is unhealthy; withholding systemd watchdog pings "
                    "(systemd restarts the hub if this lasts longer than WatchdogSec)"
                )
            return False
        if self._unhealthy:
            self._unhealthy = False
            log.info("hub is healthy again; resuming systemd watchdog pings")
        return self.notifier.watchdog()

    async def __aenter__(self) -> Watchdog:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
