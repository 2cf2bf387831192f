"""Serving HTTP: bounded connections, timely bodies, listening in words, and a drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiohttp import web

from ..config import Config
from ..errors import HubError
from .device import DEVICE_PATHS
from .responses import answer_and_close, sunbird_error

__all__ = ["WebServer"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bound_port(site: web.TCPSite, configured: int) -> int:
    """The port a site really listens on (differs from the config when it asked for port 0)."""
    server = getattr(site, "_server", None)
    sockets = server.sockets if server is not None else []
    return int(sockets[0].getsockname()[1]) if sockets else configured


_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 44\r\nConnection: close\r\n\r\ntoo many connections; retry in a few seconds"
)


async def listen(site: web.TCPSite, where: str, setting: str) -> None:
    """Start listening, turning 'address in use' and friends into a sentence for branch IT."""
    try:
        await site.start()
    except OSError as exc:
        raise HubError(
            f"cannot listen on {where}: {exc.strerror or exc}. Is another telemetry-hub (or another "
            f"program) using that port? Stop it, or set {setting} in the config"
        ) from None


class _LimitedRunner(web.AppRunner):
    """An AppRunner serving at most server.max_connections connections at once, so memory stays bounded.

    At the limit a new connection takes the place of the oldest idle one (no request in progress:
    kept alive, or still trickling its headers), else of the oldest one that has been open longer
    than server.client_timeout (a slow client); only when every connection is busy and young is the
    new one turned away with a 503. Idle or slow sockets thus cannot lock devices out.
    """

    def __init__(self, app: web.Application, *, max_connections: int, client_timeout: float, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]  # AppRunner's keyword options, passed through
        self.max_connections = max_connections
        self.client_timeout = client_timeout
        self.shed = 0  # connections closed because of the limit
        self._born: dict[object, float] = {}
        self._warned = False

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._born[handler] = asyncio.get_running_loop().time()
            if self.max_connections:
                self._limit(server, handler)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self._born.pop(handler, None)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]  # wrapped to count connections
        server.connection_lost = connection_lost  # type: ignore[method-assign]  # wrapped to count connections
        return server

    def _limit(self, server: web.Server, new: Any) -> None:
        open_ = [h for h, t in server._connections.items() if not t.is_closing()]
        if len(open_) <= self.max_connections:
            self._warned = False
            return
        now = asyncio.get_running_loop().time()
        victim = next((h for h in open_ if h is not new and not getattr(h, "_request_in_progress", True)), None)
        if victim is None and open_[0] is not new and now - self._born.get(open_[0], now) > self.client_timeout:
            victim = open_[0]
        if victim is None:
            victim = new
            if new.transport is not None:
                new.transport.write(_BUSY_ANSWER)
        victim.force_close()
        self.shed += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "%d connections open, the limit is %d (server.max_connections): closing idle, slow or new "
                "connections until fewer are open",
                len(open_),
                self.max_connections,
            )


class WebServer:
    """One aiohttp application on the HTTP port (and the HTTPS port when TLS is on)."""

    def __init__(self, cfg: Config, routes: Iterable[Sequence[web.RouteDef]], middlewares: Sequence[Any] = ()) -> None:
        self.cfg = cfg
        self.server_cfg = cfg.server
        self._draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self.app = web.Application(middlewares=[*middlewares, self._track], client_max_size=cfg.limits.max_body_bytes)
        for group in routes:
            self.app.add_routes(group)
        self.runner = _LimitedRunner(
            self.app,
            max_connections=cfg.server.max_connections,
            client_timeout=cfg.server.client_timeout,
            # A connection must send its request within server.client_timeout and may idle that long
            # between requests (aiohttp's default is an hour: slow-header clients would pile up).
            keepalive_timeout=cfg.server.client_timeout,
            auto_decompress=False,  # the device handler gunzips itself, with a size cap
            shutdown_timeout=cfg.server.shutdown_timeout,
            access_log=None,
            handle_signals=False,
        )
        self.port: int | None = None
        self.tls_port: int | None = None

    async def start(self, ssl_context: Any = None) -> None:
        """Listen on server.port (and tls.port with `ssl_context`); errors say what to change."""
        await self.runner.setup()
        host = self.cfg.server.host or None
        shown = self.cfg.server.host or "*"
        site = web.TCPSite(self.runner, host, self.cfg.server.port, reuse_address=True)
        await listen(site, f"{shown}:{self.cfg.server.port}", "server.port")
        self.port = bound_port(site, self.cfg.server.port)
        if ssl_context is not None:
            tls_site = web.TCPSite(self.runner, host, self.cfg.tls.port, ssl_context=ssl_context, reuse_address=True)
            await listen(tls_site, f"{shown}:{self.cfg.tls.port}", "tls.port")
            self.tls_port = bound_port(tls_site, self.cfg.tls.port)

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count requests in progress so shutdown can wait for them."""
        if self._draining and request.method == "POST":
            # A new request on a kept-alive connection after SIGTERM: ask the device to come back.
            return sunbird_error(
                503,
                "the hub is restarting; retry in a few seconds",
                headers={"Retry-After": "5", "Connection": "close"},
            )
        self._inflight += 1
        try:
            if (
                request.body_exists
                and request.path not in DEVICE_PATHS  # device bodies: ingest's own timed reader
                and not request.content_type.startswith("multipart/")
            ):  # uploads stream to disk
                # Small bodies (login, admin forms) must arrive within server.client_timeout too, or one
                # byte a second would hold the connection for good; the handler then reads the cached body.
                try:
                    async with asyncio.timeout(self.server_cfg.client_timeout):
                        await request.read()
                except TimeoutError:
                    return await answer_and_close(
                        request,
                        sunbird_error(
                            408,
                            f"body did not arrive within {self.server_cfg.client_timeout:g} s (server.client_timeout)",
                        ),
                    )
            return await handler(request)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Stop listening, let requests in flight (bodies still arriving included) finish, then close.

        aiohttp drops body bytes once its own shutdown starts, so the hub waits for its requests
        first and only then hands over to runner.cleanup().
        """
        runner = self.runner
        for site in list(runner.sites):
            await site.stop()
        self._draining = True
        if self._inflight:
            self._idle.clear()
            log.info("stopping: waiting for %d requests in flight", self._inflight)
            try:
                await asyncio.wait_for(self._idle.wait(), self.server_cfg.shutdown_timeout)
            except TimeoutError:
                log.warning(
                    "stopping: %d requests still running after %g s (server.shutdown_timeout); "
                    "they are cut off and their devices will resend",
                    self._inflight,
                    self.server_cfg.shutdown_timeout,
                )
        await runner.cleanup()
