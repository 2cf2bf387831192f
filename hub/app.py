"""The composition root: builds the parts from config, owns start-up, the scheduler and graceful shutdown.

Nothing else constructs a Store, a Forwarder or the web layer: `Hub` does for `telemetry-hub run`,
and `local_parts` does for the CLI commands that work on a data directory directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from . import __version__, identity, secrets
from .clock import ClockCheck
from .config import Config
from .discovery import Advertiser, default_instance_name, local_urls, txt_properties
from .errors import ConfigError, HubError
from .facts import StatusFacts
from .forward import Forwarder, make_sink
from .heartbeat import Heartbeat
from .metrics import Metrics
from .schema import SchemaChecker
from .sdnotify import Notifier, Watchdog
from .share import Importer
from .signin import LoginCodes, SessionBook
from .store import Store
from .tls import TlsMaterial, load_or_create
from .web.admin import AdminGate, Control
from .web.device import DEVICE_PATHS, Ingest, KeyRing
from .web.device_story import DeviceStories
from .web.hosts import HostGuard
from .web.https import HttpsOnly
from .web.receipts import Receipts
from .web.server import WebServer
from .web.share import ShareHandlers
from .web.status import StatusPages

__all__ = ["Hub", "LocalParts", "local_parts"]

log = logging.getLogger(__name__)

# The device API's version, announced in the DNS-SD TXT record (the Sunbird envelope's "ver").
API_VERSION = "1.0"
# How often systemd's STATUS= line is refreshed (seconds).
_STATUS_INTERVAL_S = 10.0


async def _open_store(cfg: Config) -> Store:
    """Open the store in the data directory; a damaged file is named with what to do."""
    store = Store(cfg.data_dir / "hub.db", cfg.store)
    try:
        await store.open()
    except BaseException as exc:
        await store.close()  # a half-open store's connection threads would keep the process alive
        if not isinstance(exc, sqlite3.DatabaseError):
            raise
        raise HubError(
            f"cannot open the database {store.path} ({exc}). If the file is damaged, move it "
            "aside (keep it: its events can be recovered) and start again with an empty one"
        ) from None
    return store


def _make_private(data_dir: Path) -> None:
    """The data directory 0700 and the database files 0600, whatever the umask was (logged when changed).

    SQLite gives its -wal and -shm files the database file's mode, so they follow.
    """
    for path, mode in [(data_dir, 0o700)] + [(data_dir / f"hub.db{s}", 0o600) for s in ("", "-wal", "-shm")]:
        try:
            current = path.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if current & 0o077:
            path.chmod(mode)
            log.warning("made %s private (mode %o, was %o): others on this machine could read it", path, mode, current)


@dataclass
class LocalParts:
    """What a CLI command working on a data directory needs, built as `run` builds it."""

    store: Store
    importer: Importer
    hub_id: str


@contextlib.asynccontextmanager
async def local_parts(cfg: Config) -> AsyncIterator[LocalParts]:
    """Open an existing hub's store (another process may be running it: WAL allows that) and its importer."""
    db = cfg.data_dir / "hub.db"
    if not db.exists():
        raise HubError(
            f"no hub database at {db}: give the data directory of a hub that has run (--data-dir), "
            "or a running hub (--url)"
        )
    store = await _open_store(cfg)
    try:
        yield LocalParts(
            store, Importer(store, cfg, schema=SchemaChecker()), secrets.hub_id(cfg.data_dir, create=False)
        )
    finally:
        await store.close()


class Hub:
    """One running hub: store, device API, status; started and stopped in a fixed order."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_dir
        self.store: Store | None = None
        self.forwarder: Forwarder | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.web: WebServer | None = None
        self.port: int | None = None
        self.tls: TlsMaterial | None = None
        self.advertiser: Advertiser | None = None
        self.tls_port: int | None = None
        self.hub_id = ""
        self.admin_token = ""
        self.keys: KeyRing | None = None
        self.heartbeat: Heartbeat | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Open the store, then listen; the order matters: never accept what cannot be stored."""
        cfg = self.cfg
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            identity.bind_to_machine(  # a copied card gets its own id, token and certificate here
                self.data_dir,
                tls_in_data_dir=not cfg.tls.cert_file,
                token_in_data_dir=not cfg.auth.admin_token_file and not os.environ.get(secrets.ADMIN_TOKEN_ENV),
            )
            self.hub_id = secrets.hub_id(self.data_dir)
            self.admin_token = secrets.admin_token(cfg, create=True)
            keys_file = Path(cfg.auth.device_keys_file) if cfg.auth.device_keys_file else None
            self.keys = keys = KeyRing(secrets.device_keys(cfg), keys_file)
        except PermissionError as exc:
            raise HubError(
                f"cannot write to the data directory {self.data_dir} ({exc.strerror}); "
                "set server.data_dir (or --data-dir) to a directory this user can write"
            ) from None
        if cfg.tls.enabled:  # before anything opens: a bad certificate stops the start cleanly
            self.tls = load_or_create(cfg.tls, self.data_dir, cfg.server.branch_name)
        self.store = store = await _open_store(cfg)
        _make_private(self.data_dir)
        clock = ClockCheck(cfg.server.clock_trust)
        ingest = Ingest(store, cfg.limits, cfg.store, keys, cfg.server.client_timeout, tells_time=clock.tells_time)
        sessions = SessionBook(self.data_dir / "sessions.json", self.admin_token, cfg.auth.session_days)
        admin = AdminGate(self.admin_token, sessions, LoginCodes(cfg.auth.login_code_seconds))
        self.forwarder = forwarder = Forwarder(store, cfg.upstream, make_sink(cfg, self.hub_id))
        facts = StatusFacts(
            store, ingest.counters, forwarder, cfg, version=__version__, hub_id=self.hub_id, clock=clock
        )
        metrics = Metrics(
            store, ingest.counters, forwarder, version=__version__, hub_id=self.hub_id, state=facts.state, clock=clock
        )
        # The parts do not hook themselves onto each other: the wiring is all here.
        forwarder.observers += [facts.on_batch, metrics.on_batch]
        store.on_group_commit(metrics.on_commit)
        status = StatusPages(
            facts, metrics, admin, token_place=secrets.admin_token_source(cfg), secure_cookies=cfg.tls.enabled
        )
        share = ShareHandlers(
            Importer(store, cfg, schema=ingest.schema), cfg, admin=admin, db_path=store.path, hub_id=self.hub_id
        )
        control = Control(store, forwarder, admin)
        hosts = HostGuard(cfg.server.host_names, cfg.server.host)
        https_only = HttpsOnly(cfg.tls.hsts_seconds)
        self.web = WebServer(
            cfg,
            [
                ingest.routes(),
                Receipts(store, cfg.limits, keys).routes(),
                status.routes(),
                DeviceStories(store, status).routes(),
                share.routes(),
                control.routes(),
            ],
            middlewares=[hosts.middleware, https_only.middleware, ingest.cors],
        )
        await self.web.start(self.tls.context if self.tls is not None else None)
        self.port, self.tls_port = self.web.port, self.web.tls_port
        https_only.tls_port = self.tls_port  # from now on people's paths are HTTPS only
        shown = cfg.server.host or "*"
        log.info(
            "telemetry-hub %s listening on http://%s:%d (data in %s)", __version__, shown, self.port, self.data_dir
        )
        if self.tls is not None:
            log.info(
                "HTTPS on port %d, certificate %s, SHA-256 fingerprint %s (clients can pin it)",
                self.tls_port,
                self.tls.cert_path,
                self.tls.fingerprint,
            )
        code, _ = admin.codes.mint()
        log.info(
            "sign-in code for a phone: %s (works once, for %g minutes, in place of the admin token; "
            "`telemetry-hub login-code` prints a new one)",
            code,
            cfg.auth.login_code_seconds / 60,
        )
        await forwarder.start()
        self.heartbeat = Heartbeat(
            store, facts, hub_id=self.hub_id, version=__version__, channel=cfg.upstream.channel_id
        )
        await self.heartbeat.start()
        self.scheduler = self._schedule(store, forwarder)
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
            props = txt_properties(
                path=DEVICE_PATHS[0],
                ver=API_VERSION,
                hub_id=self.hub_id,
                name=name,
                auth=auth,
                tls_fingerprint=self.tls.fingerprint if self.tls else None,
                extra=d.txt,
            )
            instance = d.instance or default_instance_name(self.cfg.server.branch_name, socket.gethostname())
            self.advertiser = Advertiser(instance=instance, port=self.port, properties=props, interfaces=d.interfaces)
        except ValueError as exc:
            raise ConfigError(f"discovery: {exc}") from None
        await self.advertiser.start()

    def _schedule(self, store: Store, forwarder: Forwarder) -> AsyncIOScheduler:
        """Periodic jobs: the cheap link probe, retention, and wake-ups when upload windows open."""
        sched = AsyncIOScheduler()
        up = self.cfg.upstream
        if forwarder.enabled:
            sched.add_job(
                forwarder.probe,
                "interval",
                seconds=max(1.0, up.probe_interval),
                id="probe",
                max_instances=1,
                coalesce=True,
            )
            for window, (start, _) in zip(up.upload_windows, up.windows, strict=True):
                sched.add_job(forwarder.wake, "cron", hour=start // 60, minute=start % 60, id=f"window-{window}")
        if up.heartbeat_interval > 0 and self.heartbeat is not None:  # the first one an interval after start
            sched.add_job(
                self.heartbeat.beat,
                "interval",
                seconds=up.heartbeat_interval,
                id="heartbeat",
                max_instances=1,
                coalesce=True,
            )
        retention_s = self.cfg.store.retention_days * 86400
        # Hourly for the default week; a short retention is applied in step with itself.
        every = min(3600.0, max(10.0, retention_s / 4))
        sched.add_job(
            store.prune,
            "interval",
            seconds=every,
            args=[retention_s],
            id="retention",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now() + timedelta(seconds=min(30.0, every)),
        )
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
        if self.web is not None:
            drains.append(self.web.drain())
        if self.forwarder is not None:
            drains.append(self.forwarder.stop(timeout=min(self.cfg.upstream.timeout, self.cfg.server.shutdown_timeout)))
        await asyncio.gather(*drains)
        self.web = None
        self.forwarder = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    def reload(self) -> None:
        """SIGHUP (`systemctl reload telemetry-hub`): read the device keys file again now."""
        log.info("reload: reading the device keys again")
        if self.keys is not None:
            self.keys.reload()

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
        loop.add_signal_handler(signal.SIGHUP, self.reload)  # systemctl reload
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
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped cleanly")
