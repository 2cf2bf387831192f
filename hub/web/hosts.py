"""The Host check: non-device paths answer only to the names and addresses the hub really has.

A web page a student opens can make their browser ask `http://attacker.example/` while DNS
points that name at the hub (DNS rebinding); the browser then lets the page read the answer.
Checking the Host header closes that: such a request names a host the hub is not, and gets 421.
Device paths stay open to any Host (devices use IPs and names the hub cannot know), and say no
more than they do to anyone.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable

import ifaddr
from aiohttp import web

from .device import DEVICE_PATHS
from .responses import answer_and_close, sunbird_error

__all__ = ["HostGuard"]

log = logging.getLogger(__name__)

# The host's addresses are re-read at most this often (seconds): DHCP may change them.
_REFRESH_S = 10.0
_ALWAYS = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})


def _host_part(host: str) -> str:
    """The Host header without its port, brackets or trailing dot, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".").partition("%")[0]


def _own_addresses() -> set[str]:
    """Every address of this host, IPv4 and IPv6 (blocking: reads the interface list)."""
    out = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                out.add(str(ipaddress.ip_address(raw.partition("%")[0])))
            except ValueError:
                continue
    return out


class HostGuard:
    """Middleware: a request for a non-device path must name this hub in its Host header."""

    def __init__(self, extra_names: Iterable[str] = (), listen_host: str = "") -> None:
        hostname = socket.gethostname().lower()
        self.names = set(_ALWAYS) | {hostname, f"{hostname}.local"} | {n.strip().lower() for n in extra_names if n}
        if listen_host:
            self.names.add(_host_part(listen_host))
        self._addresses: set[str] = set()
        self._read_at = 0.0
        self._warned: set[str] = set()

    def allows(self, host: str) -> bool:
        """Whether `host` (a Host header) is one of this hub's names or addresses."""
        name = _host_part(host)
        if name in self.names:
            return True
        now = time.monotonic()
        if now - self._read_at > _REFRESH_S or (name not in self._addresses and now - self._read_at > 1.0):
            try:
                self._addresses = _own_addresses()
            except OSError as exc:
                log.debug("cannot list this host's addresses: %s", exc)
            self._read_at = now
        try:
            name = str(ipaddress.ip_address(name))
        except ValueError:
            return False
        return name in self._addresses

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """421 for a non-device path asked for under a name that is not this hub's."""
        if request.path in DEVICE_PATHS or self.allows(request.host):
            return await handler(request)
        shown = "".join(c if c.isprintable() else "?" for c in request.host)[:100]
        if shown not in self._warned and len(self._warned) < 100:
            self._warned.add(shown)
            log.warning(
                "refused %s %s for Host %r from %s: not a name of this hub (add it to server.host_names if it is one)",
                request.method,
                request.path,
                shown,
                request.remote,
            )
        refusal = sunbird_error(
            421,
            f"this hub does not answer to the name {shown!r}: use its address or name "
            "(or add the name to server.host_names in the hub's config)",
        )
        return await answer_and_close(request, refusal)  # nothing more is read from a misdirected client
