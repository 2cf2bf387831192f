"""The composition root: builds the parts from config, owns start-up and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .config import Config
from .errors import ConfigError, HubError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .admin import AdminGate
from .control import Control
from .forward import Forwarder
from .imports import ShareService
from .sdnotify import Notifier, Watchdog
from .discovery import Advertiser, default_instance_name, local_urls, txt_properties
from .ingest import DEVICE_PATHS, Ingest, KeyRing, answer_and_close, sunbird_error
from .status import Status
from .tls import TlsMaterial, load_or_create
from .store import Store

__all__ = ["Hub", "read_secret_file"]

log = logging.getLogger(__name__)

# The device API's version, announced in the DNS-SD TXT record (the Sunbird envelope's "ver").
API_VERSION = "1.0"
# How often systemd's STATUS= line is refreshed (seconds).
_STATUS_INTERVAL_S = 10.0


def read_secret_file(path: Path) -> str:
    """Read a key file, stripped; the key itself is never logged."""
    try:
        return path.read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None


def _stable_value(path: Path, make: str) -> str:
    """Read a value kept in the data dir, creating it once (mode 0600) when missing."""
    try:
        value = path.read_text("utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(make + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return make


def _bound_port(site: web.TCPSite, configured: int) -> int:
    """The port a site really listens on (differs from the config when it asked for port 0)."""
    server = getattr(site, "_server", None)
    sockets = server.sockets if server is not None else []
    return int(sockets[0].getsockname()[1]) if sockets else configured


_BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 44\r\nConnection: close\r\n\r\ntoo many connections; retry in a few seconds")


async def _listen(site: web.TCPSite, where: str, setting: str) -> None:
    """Start listening, turning 'address in use' and friends into a sentence for branch IT."""
    try:
        await site.start()
    except OSError as exc:
        raise HubError(f"cannot listen on {where}: {exc.strerror or exc}. Is another telemetry-hub (or another "
                       f"program) using that port? Stop it, or set {setting} in the config") from None


class _LimitedRunner(web.AppRunner):
    """An AppRunner serving at most server.max_connections connections at once, so memory stays bounded.

    At the limit a new connection takes the place of the oldest idle one (no request in progress:
    kept alive, or still trickling its headers), else of the oldest one that has been open longer
    than server.client_timeout (a slow client); only when every connection is busy and young is the
    new one turned away with a 503. Idle or slow sockets thus cannot lock devices out.
    """

    def __init__(self, app: web.Application, *, max_connections: int, client_timeout: float, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
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

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
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
            log.warning("%d connections open, the limit is %d (server.max_connections): closing idle, slow or new "
                        "connections until fewer are open", len(open_), self.max_connections)


class Hub:
    """One running hub: store, device API, status; started and stopped in a fixed order."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_dir
        self.store: Store | None = None
        self.forwarder: Forwarder | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.tls: TlsMaterial | None = None
        self.advertiser: Advertiser | None = None
        self.tls_port: int | None = None
        self.hub_id = ""
        self.admin_token = ""
        self._stop = asyncio.Event()
        self._draining = False
        self._inflight = 0
        self._idle = asyncio.Event()

    def _secrets(self) -> KeyRing:
        a = self.cfg.auth
        self.hub_id = _stable_value(self.data_dir / "hub-id", str(uuid.uuid4()))
        env_token = os.environ.get("TELEMETRY_HUB_ADMIN_TOKEN", "").strip()
        if a.admin_token_file:
            self.admin_token = read_secret_file(Path(a.admin_token_file))
        elif env_token:
            self.admin_token = env_token
        else:
            # Hex: never starts with "-", so `--token VALUE` works on any command line.
            self.admin_token = _stable_value(self.data_dir / "admin-token", secrets.token_hex(24))
        keys: list[str] = []
        if a.device_keys_file:
            text = read_secret_file(Path(a.device_keys_file))
            keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
            if not keys:
                raise ConfigError(f"auth.device_keys_file {a.device_keys_file} holds no key; add one per line")
        return KeyRing(keys)

    async def start(self) -> None:
        """Open the store, then listen; the order matters: never accept what cannot be stored."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            keys = self._secrets()
        except PermissionError as exc:
            raise HubError(f"cannot write to the data directory {self.data_dir} ({exc.strerror}); "
                           "set server.data_dir (or --data-dir) to a directory this user can write") from None
        if self.cfg.tls.enabled:  # before anything opens: a bad certificate stops the start cleanly
            self.tls = load_or_create(self.cfg.tls, self.data_dir, self.cfg.server.branch_name)
        self.store = Store(self.data_dir / "hub.db", self.cfg.store)
        try:
            await self.store.open()
        except sqlite3.DatabaseError as exc:
            raise HubError(f"cannot open the database {self.store.path} ({exc}). If the file is damaged, move it "
                           "aside (keep it: its events can be recovered) and start again with an empty one") from None
        ingest = Ingest(self.store, self.cfg.limits, self.cfg.store, keys, self.cfg.server.client_timeout)
        admin = AdminGate(self.admin_token)
        self.forwarder = Forwarder(self.store, self.cfg.upstream, self.cfg.upstream_url, self.hub_id)
        status = Status(self.store, ingest, self.forwarder, admin, self.cfg, version=__version__, hub_id=self.hub_id,
                        cookie_key=self.admin_token)
        share = ShareService(self.store, self.cfg, admin=admin, schema=ingest.schema, hub_id=self.hub_id)
        app = web.Application(middlewares=[ingest.cors, self._track], client_max_size=self.cfg.limits.max_body_bytes)
        control = Control(self.store, self.forwarder, admin)
        app.add_routes(ingest.routes())
        app.add_routes(status.routes())
        app.add_routes(share.routes())
        app.add_routes(control.routes())
        self.runner = _LimitedRunner(
            app,
            max_connections=self.cfg.server.max_connections,
            client_timeout=self.cfg.server.client_timeout,
            # A connection must send its request within server.client_timeout and may idle that long
            # between requests (aiohttp's default is an hour: slow-header clients would pile up).
            keepalive_timeout=self.cfg.server.client_timeout,
            auto_decompress=False,  # the ingest handler gunzips itself, with a size cap
            shutdown_timeout=self.cfg.server.shutdown_timeout,
            access_log=None,
            handle_signals=False,
        )
        await self.runner.setup()
        host = self.cfg.server.host or None
        site = web.TCPSite(self.runner, host, self.cfg.server.port, reuse_address=True)
        await _listen(site, f"{self.cfg.server.host or '*'}:{self.cfg.server.port}", "server.port")
        self.port = _bound_port(site, self.cfg.server.port)
        shown = self.cfg.server.host or "*"
        log.info("telemetry-hub %s listening on http://%s:%d (data in %s)", __version__, shown, self.port, self.data_dir)
        if self.tls is not None:
            tls_site = web.TCPSite(self.runner, host, self.cfg.tls.port, ssl_context=self.tls.context,
                                   reuse_address=True)
            await _listen(tls_site, f"{self.cfg.server.host or '*'}:{self.cfg.tls.port}", "tls.port")
            self.tls_port = _bound_port(tls_site, self.cfg.tls.port)
            log.info("HTTPS on port %d, certificate %s, SHA-256 fingerprint %s (clients can pin it)",
                     self.tls_port, self.tls.cert_path, self.tls.fingerprint)
        await self.forwarder.start()
        self.scheduler = self._schedule(self.store, self.forwarder)
        self.scheduler.start()
        await self._advertise(keys.required)

    async def _advertise(self, auth: bool) -> None:
        """Announce the hub over mDNS, and print its URLs for networks where multicast does not cross."""
        assert self.port is not None
        urls = await asyncio.to_thread(local_urls, self.port, DEVICE_PATHS[0])
        if self.tls is not None and self.tls_port is not None:
            urls += await asyncio.to_thread(local_urls, self.tls_port, DEVICE_PATHS[0], "https")
        if self.cfg.server.host in ("", "0.0.0.0", "::"):
            for url in urls:
                log.info("devices can sync to %s", url)
        d = self.cfg.discovery
        if not d.enabled:
            return
        name = self.cfg.server.branch_name or socket.gethostname()
        try:
            props = txt_properties(path=DEVICE_PATHS[0], ver=API_VERSION, hub_id=self.hub_id, name=name, auth=auth,
                                   tls_fingerprint=self.tls.fingerprint if self.tls else None, extra=d.txt)
            instance = d.instance or default_instance_name(self.cfg.server.branch_name, socket.gethostname())
            self.advertiser = Advertiser(instance=instance, port=self.port, properties=props, interfaces=d.interfaces)
        except ValueError as exc:
            raise ConfigError(f"discovery: {exc}") from None
        await self.advertiser.start()

    def _schedule(self, store: Store, forwarder: Forwarder) -> AsyncIOScheduler:
        """Periodic jobs: the cheap link probe, retention, and wake-ups when upload windows open."""
        sched = AsyncIOScheduler()
        up = self.cfg.upstream
        if forwarder.url:
            sched.add_job(forwarder.probe, "interval", seconds=max(1.0, up.probe_interval), id="probe",
                          max_instances=1, coalesce=True)
            for window in up.upload_windows:
                hour, minute = (int(x) for x in window.split("-")[0].split(":"))
                sched.add_job(forwarder.wake, "cron", hour=hour, minute=minute, id=f"window-{window}")
        retention_s = self.cfg.store.retention_days * 86400
        # Hourly for the default week; a short retention is applied in step with itself.
        every = min(3600.0, max(10.0, retention_s / 4))
        sched.add_job(store.prune, "interval", seconds=every, args=[retention_s], id="retention", max_instances=1,
                      coalesce=True, next_run_time=datetime.now() + timedelta(seconds=min(30.0, every)))
        return sched

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish and commit, let the upstream batch finish, close."""
        if self.advertiser is not None:  # goodbye first, so devices stop picking this hub at once
            await self.advertiser.close()
            self.advertiser = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        # The device side drains (stop listening, answer in-flight requests) while the batch in
        # flight upstream finishes; both within server.shutdown_timeout.
        drains = []
        if self.runner is not None:
            drains.append(self._drain_devices(self.runner))
        if self.forwarder is not None:
            drains.append(self.forwarder.stop(timeout=min(self.cfg.upstream.timeout, self.cfg.server.shutdown_timeout)))
        await asyncio.gather(*drains)
        self.runner = None
        self.forwarder = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    @web.middleware
    async def _track(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Count requests in progress so shutdown can wait for them."""
        if self._draining and request.method == "POST":
            # A new request on a kept-alive connection after SIGTERM: ask the device to come back.
            return sunbird_error(503, "the hub is restarting; retry in a few seconds", headers={
                "Retry-After": "5", "Connection": "close"})
        self._inflight += 1
        try:
            if (request.body_exists and request.path not in DEVICE_PATHS  # device bodies: ingest's own timed reader
                    and not request.content_type.startswith("multipart/")):  # uploads stream to disk
                # Small bodies (login, admin forms) must arrive within server.client_timeout too, or one
                # byte a second would hold the connection for good; the handler then reads the cached body.
                try:
                    async with asyncio.timeout(self.cfg.server.client_timeout):
                        await request.read()
                except TimeoutError:
                    return await answer_and_close(request, sunbird_error(
                        408, f"body did not arrive within {self.cfg.server.client_timeout:g} s (server.client_timeout)"))
            return await handler(request)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _drain_devices(self, runner: web.AppRunner) -> None:
        """Stop listening, let requests in flight (bodies still arriving included) finish, then close.

        aiohttp drops body bytes once its own shutdown starts, so the hub waits for its requests
        first and only then hands over to runner.cleanup().
        """
        for site in list(runner.sites):
            await site.stop()
        self._draining = True
        if self._inflight:
            self._idle.clear()
            log.info("stopping: waiting for %d requests in flight", self._inflight)
            try:
                await asyncio.wait_for(self._idle.wait(), self.cfg.server.shutdown_timeout)
            except asyncio.TimeoutError:
                log.warning("stopping: %d requests still running after %g s (server.shutdown_timeout); "
                            "they are cut off and their devices will resend", self._inflight,
                            self.cfg.server.shutdown_timeout)
        await runner.cleanup()

    def request_stop(self) -> None:
        """Ask the hub to stop (signal handler); a second request skips the drain."""
        if self._stop.is_set():
            log.warning("second stop signal: exiting without waiting for in-flight work")
            os._exit(1)
        self._stop.set()

    def summary(self) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status`)."""
        if self.store is None:
            return "starting"
        s = self.store.stats
        link = self.forwarder.state.link if self.forwarder else "disabled"
        full = " | REFUSING NEW DATA: store full" if self.store.space_problem() else ""
        return f"{s.backlog} events waiting for upstream, link {link}, {s.stored_total} stored{full}"

    def _alive(self) -> bool:
        """Watchdog health beyond the loop turning: the store's writer must still be running."""
        return self.store is not None and self.store.writer_alive()

    async def _report_status(self, notifier: Notifier) -> None:
        while True:
            notifier.status(self.summary())
            await asyncio.sleep(_STATUS_INTERVAL_S)

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully, telling systemd each step."""
        loop = asyncio.get_running_loop()
        notifier = Notifier()
        watchdog = Watchdog(notifier, healthy=self._alive)
        for sig in (signal.SIGTERM, signal.SIGINT):  # SIGTERM: systemd stop; SIGINT: Ctrl+C
            loop.add_signal_handler(sig, self.request_stop)
        reporter: asyncio.Task[None] | None = None
        try:
            await self.start()
            watchdog.start()
            notifier.ready(self.summary())  # only now: the store is open and the port accepts connections
            reporter = asyncio.create_task(self._report_status(notifier))
            await self._stop.wait()
            log.info("stopping: finishing requests in flight and closing the store")
            notifier.stopping("stopping: finishing requests in flight")
        finally:
            if reporter is not None:
                reporter.cancel()
            await self.stop()
            await watchdog.stop()  # last: a hung drain is still caught by systemd's watchdog
            notifier.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("stopped cleanly")
