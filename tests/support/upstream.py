"""A fault-injecting fake of the Sunbird telemetry upstream (Kong gateway + telemetry service).

Used in-process by tests (``from upstream import FakeUpstream``) and standalone by benchmarks and
subprocess tests (``python tests/upstream.py --port P [--key K] [--fail-rate 0.1] ...``).
The layers answer in the order the real ones do (sunbird-contract.md 1.2, 1.5, 1.6): Kong checks the
key (401), the wire size (413) and the rate limit (429); then the service inflates and parses the
body (400/413/415 as Express would), then answers 200 ``SUCCESS`` or 500 ``SERVER_ERROR``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import random
import signal
import sys
import time
import zlib
from collections import Counter
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

__all__ = ["ANSWERS", "TELEMETRY_PATHS", "Attempt", "BatchRecord", "FakeUpstream", "IgnoredRequest", "main"]

log = logging.getLogger("upstream")

TELEMETRY_PATHS = ("/api/data/v1/telemetry", "/v1/telemetry")
KONG_MAX_WIRE_BYTES = 1 * 1024 * 1024  # Kong request-size-limiting allowed_payload_size: 1 (MB = 2**20)
EXPRESS_JSON_LIMIT = 5 * 1024 * 1024  # body-parser json limit '5mb', applied after inflating
SHUTDOWN_TIMEOUT_S = 0.25  # stop() must not wait on a hung handler for long
_JSON = {"Content-Type": "application/json; charset=utf-8"}
_HTML = {"Content-Type": "text/html; charset=utf-8"}
_DIGEST: web.RequestKey[_Digest] = web.RequestKey("digest", object)
_TEXT_STATUS = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large", 415: "Unsupported Media Type"}


@dataclass(slots=True)
class BatchRecord:
    """One accepted upstream request, as the hub sent it."""

    path: str
    msgid: Any  # params.msgid (None if absent): upstream dedups batches by it, so retries must reuse it
    mid: Any  # top-level mid: the service generates one when it is missing
    did: Any  # params.did
    channel_id: str | None
    app_id: str | None
    device_id: str | None
    content_encoding: str | None
    event_count: int
    wire_bytes: int
    mids: list[str]
    received_at: float


@dataclass(slots=True)
class Attempt:
    """One request to a telemetry path, whatever became of it (for retry timing and msgid checks)."""

    at: float  # time.monotonic() when it arrived
    status: int | None  # None: the connection was reset on purpose, or the client gave up
    msgid: Any  # params.msgid, once the body was parsed (None before that, e.g. a 401 or 429)
    mids: list[str] | None  # the batch's mids, once parsed


@dataclass(slots=True)
class IgnoredRequest:
    """A request the real service would answer 200 yet store nothing of (a silent-loss mistake)."""

    path: str
    content_type: str | None
    content_encoding: str | None
    wire_bytes: int
    reason: str


@dataclass(slots=True)
class _RateLimit:
    remaining: int = 0
    retry_after: int = 1
    status: int = 429


@dataclass
class _Faults:
    """Every knob the control API may set, with the value reset_faults() restores."""

    fail_rate: float = 0.0
    hang_seconds: float = 0.0
    hang_after_store: bool = False
    reset_rate: float = 0.0
    reset_after_store: bool = False
    latency: float = 0.0
    key: str | None = None
    max_wire_bytes: int = KONG_MAX_WIRE_BYTES
    max_json_bytes: int = EXPRESS_JSON_LIMIT
    reject_mids: set[str] = field(default_factory=set)
    # Something other than upstream answers every request (see ANSWERS); None = upstream itself.
    answer: str | None = None
    redirect_status: int = 301  # the "redirect" answer's status
    redirect_to: str | None = None  # its Location; None = /moved + the path asked, on this server


# What may stand between the hub and upstream, for ``answer`` (none of them stores anything):
#   portal      a captive portal / data-pack page: 200 and an HTML page (~64 KB) to every request
#   empty       200 with an empty body to every request (a proxy that swallows the POST)
#   other-json  200 with JSON that is not a telemetry API answer to every request
#   redirect    a telemetry POST gets ``redirect_status`` and a Location; every GET and HEAD gets 200 with
#               the telemetry service's SUCCESS body (so a client that turns the POST into a GET is fooled)
ANSWERS = ("portal", "empty", "other-json", "redirect")
_PORTAL_PAGE = (
    b"<!DOCTYPE html><html><head><title>Data pack expired - recharge to continue</title></head><body>"
    + b"<p>Your data pack has expired. Recharge now to continue browsing.</p>" * 900
    + b"</body></html>"
)


class _ClientGone(Exception):
    """The client left while we were delaying its answer; nothing must be recorded."""


class FakeUpstream:
    """The Sunbird telemetry upstream as seen through Kong, with faults a test can switch at runtime.

    Fault attributes (``fail_rate``, ``hang_seconds``, ``hang_after_store``, ``reset_rate``,
    ``reset_after_store``, ``latency``, ``key``, ``max_wire_bytes``, ``max_json_bytes``,
    ``reject_mids``, ``answer``, ``redirect_status``, ``redirect_to``) are plain attributes read on every request, so setting them from a test in the
    same event loop takes effect on the next request.
    """

    def __init__(
        self,
        *,
        key: str | None = None,
        fail_rate: float = 0.0,
        hang_seconds: float = 0.0,
        hang_after_store: bool = False,
        reset_rate: float = 0.0,
        reset_after_store: bool = False,
        latency: float = 0.0,
        max_wire_bytes: int = KONG_MAX_WIRE_BYTES,
        max_json_bytes: int = EXPRESS_JSON_LIMIT,
        reject_mids: Iterable[str] = (),
        record_events: bool = True,
        log_requests: bool = False,
        seed: int | None = None,
    ) -> None:
        self._defaults = _Faults(
            fail_rate, hang_seconds, hang_after_store, reset_rate, reset_after_store,
            latency, key, max_wire_bytes, max_json_bytes, set(reject_mids),
        )  # fmt: skip
        self.reset_faults()
        self.record_events = record_events
        self.log_requests = log_requests
        self.random = random.Random(seed)
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._control_runner: web.ServerRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._control_port: int | None = None
        self._flap_task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.clear()

    # -- faults ---------------------------------------------------------------------------------

    def reset_faults(self) -> None:
        """Back to the constructor's faults, so one test's faults never leak into the next step."""
        d = self._defaults
        self.fail_rate = d.fail_rate
        self.hang_seconds = d.hang_seconds
        self.hang_after_store = d.hang_after_store
        self.reset_rate = d.reset_rate
        self.reset_after_store = d.reset_after_store
        self.latency = d.latency
        self.key = d.key
        self.max_wire_bytes = d.max_wire_bytes
        self.max_json_bytes = d.max_json_bytes
        self.reject_mids: set[str] = set(d.reject_mids)
        self.answer: str | None = d.answer
        self.redirect_status = d.redirect_status
        self.redirect_to: str | None = d.redirect_to
        self._rate = _RateLimit()
        if getattr(self, "_flap_task", None) is not None:
            self._flap_task.cancel()  # its finally brings the site back up
            self._flap_task = None

    def rate_limit(self, count: int, retry_after: int = 1, status: int = 429) -> None:
        """Answer the next ``count`` requests with ``status`` (429 as Kong, or 503) and ``Retry-After``."""
        if status not in (429, 503):
            raise ValueError("rate_limit status must be 429 or 503")
        self._rate = _RateLimit(count, retry_after, status)

    def configure(self, **faults: Any) -> None:
        """Set several fault attributes at once, checked by name; the control API goes through here."""
        for name, value in faults.items():
            if name not in _Faults.__dataclass_fields__:
                raise ValueError(f"unknown fault {name!r}")
            if name == "reject_mids":
                value = set(value)
            elif name in ("fail_rate", "hang_seconds", "reset_rate", "latency"):
                value = float(value)
            elif name in ("max_wire_bytes", "max_json_bytes", "redirect_status"):
                value = int(value)
            elif name == "answer" and value is not None and value not in ANSWERS:
                raise ValueError(f"unknown answer {value!r}; one of {', '.join(ANSWERS)}")
            elif name in ("hang_after_store", "reset_after_store"):
                value = bool(value)
            elif value is not None:
                value = str(value)
            setattr(self, name, value)

    # -- recorded state -------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget everything received and every counter, keeping faults and the listening socket."""
        self._bodies: list[tuple[bytes, str]] = []  # wire bytes + encoding of stored batches
        self._events: list[Any] = []
        self._parsed_bodies = 0
        self.received_mids: list[str] = []
        self.mids: set[str] = set()
        self.batches: list[BatchRecord] = []
        self.ignored_requests: list[IgnoredRequest] = []
        self.attempts: list[Attempt] = []  # every telemetry request, in arrival order
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.resets = 0
        self.abandoned = 0

    @property
    def events(self) -> list[Any]:
        """Every stored event as a parsed dict, in order (with ``record_events``).

        Kept as the wire bytes and parsed on first access: ~10^6 live dicts would make the
        cyclic GC, not the fake, the bottleneck of a benchmark, and take ~4 KB per event.
        """
        for body, enc in self._bodies[self._parsed_bodies :]:
            self._events.extend(orjson.loads(_inflate(body, enc, None))["events"])
        self._parsed_bodies = len(self._bodies)
        return self._events

    @property
    def counters(self) -> dict[str, Any]:
        """A JSON-ready snapshot of what happened so far (also served as ``GET /_state``)."""
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "resets": self.resets,
            "abandoned": self.abandoned,
            "batches": len(self.batches),
            "received": len(self.received_mids),
            "unique": len(self.mids),
            "ignored": len(self.ignored_requests),
            "down": self.is_down,
        }

    def bodies(self) -> list[bytes]:
        """The inflated JSON body of every stored batch, as it arrived (with ``record_events``)."""
        return [_inflate(body, enc, None) for body, enc in self._bodies]

    def deliveries(self) -> Counter[str]:
        """How many stored (accepted) requests carried each mid."""
        return Counter(self.received_mids)

    def redelivered(self) -> dict[str, int]:
        """Mids stored more than once, with their count (the real upstream stores a mid each time it comes
        in a new batch msgid; the same msgid again it discards, see ``foreign_redeliveries``)."""
        return {m: n for m, n in self.deliveries().items() if n > 1}

    def foreign_redeliveries(self) -> dict[str, set[Any]]:
        """Mids stored under more than one batch msgid: duplicates that upstream's msgid dedup cannot drop."""
        msgids: dict[str, set[Any]] = {}
        for i, b in enumerate(self.batches):
            key = b.msgid if b.msgid is not None else ("no msgid", i)
            for m in b.mids:
                msgids.setdefault(m, set()).add(key)
        return {m: ids for m, ids in msgids.items() if len(ids) > 1}

    def changed_retries(self) -> dict[Any, list[list[str]]]:
        """msgids that came back carrying other events than the first time (upstream would drop the new ones)."""
        seen: dict[Any, list[list[str]]] = {}
        for a in self.attempts:
            if a.msgid is not None and a.mids is not None:
                variants = seen.setdefault(a.msgid, [])
                if a.mids not in variants:
                    variants.append(a.mids)
        return {k: v for k, v in seen.items() if len(v) > 1}

    async def wait_unique(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` distinct mids were stored, so tests need not poll."""
        if len(self.mids) >= count:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (count, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _wake_waiters(self) -> None:
        n = len(self.mids)
        for count, fut in self._waiters:
            if n >= count and not fut.done():
                fut.set_result(None)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port; stays the same across down()/up()."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` without a path."""
        return f"http://{self._host}:{self._port}"

    @property
    def url(self) -> str:
        """The full telemetry URL, as the hub's config would hold it."""
        return self.base_url + TELEMETRY_PATHS[0]

    @property
    def control_url(self) -> str:
        """Where ``POST /_control`` and ``GET /_state`` are served (a separate port if one was asked)."""
        port = self._control_port if self._control_port is not None else self._port
        return f"http://{self._host}:{port}"

    @property
    def is_down(self) -> bool:
        """True while connections are refused."""
        return self._runner is not None and self._site is None

    async def start(self, host: str = "127.0.0.1", port: int = 0, control_port: int | None = None) -> None:
        """Listen on ``host:port`` (0 picks a free port); ``control_port`` keeps control up while down."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream already started")
        self._host = host
        server = web.Server(self._handle, handler_cancellation=True, access_log=None, auto_decompress=False)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        self._port = port
        await self._listen()
        if control_port is not None:
            control = web.Server(self._handle_control_only, access_log=None)
            self._control_runner = web.ServerRunner(control, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await self._control_runner.setup()
            site = web.TCPSite(self._control_runner, host, control_port)
            await site.start()
            self._control_port = _bound_port(site)

    async def stop(self) -> None:
        """Close everything; idempotent. Recorded state stays readable."""
        runners = (self._runner, self._control_runner)
        self._runner = self._control_runner = None  # first, so a cancelled flap does not come back up
        self._site = None
        for task in [self._flap_task, *self._background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._flap_task = None
        for runner in runners:
            if runner is not None:
                await runner.cleanup()

    async def down(self) -> None:
        """Refuse new connections and drop open ones (WAN link down); recorded state is kept."""
        if self._runner is None or self._site is None:
            return
        site, self._site = self._site, None
        await site.stop()
        server = self._runner.server
        if server is not None:
            for conn in server.connections:
                conn.force_close()

    async def up(self) -> None:
        """Listen again on the same port after down()."""
        if self._runner is None:
            raise RuntimeError("FakeUpstream not started")
        if self._site is None:
            await self._listen()

    def flap(self, period_up: float, period_down: float) -> asyncio.Task[None]:
        """Toggle up/down forever (an unstable link) until reset_faults() or stop(); ends up."""
        if self._flap_task is not None:
            self._flap_task.cancel()
        self._flap_task = asyncio.get_running_loop().create_task(self._flap(period_up, period_down))
        return self._flap_task

    async def _flap(self, period_up: float, period_down: float) -> None:
        try:
            while True:
                await self.up()
                await asyncio.sleep(period_up)
                await self.down()
                await asyncio.sleep(period_down)
        finally:
            if self._runner is not None:
                await self.up()

    async def _listen(self) -> None:
        assert self._runner is not None
        for attempt in range(50):
            if self._site is not None:
                return  # another up() (e.g. a cancelled flap's) got there first while we waited
            site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                # up() right after down() may race a socket still closing; the port is ours, retry.
                await site.stop()
                if exc.errno != errno.EADDRINUSE or self._port == 0 or attempt == 49:
                    raise
                await asyncio.sleep(0.02)
                continue
            self._site = site
            self._port = _bound_port(site)
            return

    async def __aenter__(self) -> FakeUpstream:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- request handling -----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_"):
            return await self._control(request)
        started = time.monotonic()
        self.requests += 1
        try:
            if self.answer is not None:
                resp, events = self._answer_instead(request), 0
            elif path in TELEMETRY_PATHS:
                resp, events = await self._telemetry(request)
            else:
                resp, events = self._other(request), 0
        except (_ClientGone, asyncio.CancelledError):
            self.abandoned += 1  # the client gave up (timeout) before its answer
            self._attempt(request, started, None)
            raise asyncio.CancelledError from None  # aiohttp's own path for a client disconnect
        self._attempt(request, started, None if resp is None else resp.status)
        if resp is None:  # connection reset on purpose
            self.resets += 1
            if self.log_requests:
                log.info("%s %s RESET", request.method, path)
            raise asyncio.CancelledError
        self.by_status[resp.status] += 1
        if self.log_requests:
            ms = (time.monotonic() - started) * 1000
            log.info("%s %s %d events=%d %.1fms", request.method, path, resp.status, events, ms)
        return resp

    def _attempt(self, request: web.BaseRequest, started: float, status: int | None) -> None:
        if request.path in TELEMETRY_PATHS:
            digest = request.get(_DIGEST)
            self.attempts.append(
                Attempt(started, status, digest.msgid if digest else None, list(digest.mids) if digest else None)
            )

    def _answer_instead(self, request: web.BaseRequest) -> web.Response:
        """What a portal, a proxy or a redirect answers in upstream's place (``answer``); nothing is stored."""
        if self.answer == "portal":
            return web.Response(status=200, body=_PORTAL_PAGE, headers=_HTML)
        if self.answer == "empty":
            return web.Response(status=200, body=b"")
        if self.answer == "other-json":
            return _json(200, b'{"status":"ok","message":"request received"}')
        # redirect
        if request.method in ("GET", "HEAD"):
            return _success()
        if request.path in TELEMETRY_PATHS:
            location = self.redirect_to or "/moved" + request.path
            return web.Response(status=self.redirect_status, headers={"Location": location})
        return _json(404, b'{"message":"no Route matched with those values"}')

    def _other(self, request: web.BaseRequest) -> web.Response:
        if request.path == "/health" and request.method in ("GET", "HEAD"):
            return _json(200, b'{"healthy":true}')
        return _json(404, b'{"message":"no Route matched with those values"}')  # Kong's answer

    async def _telemetry(self, request: web.BaseRequest) -> tuple[web.Response | None, int]:
        """Kong's plugins in priority order, then the Express service; None means reset the connection."""
        if self.latency > 0:
            await self._delay(request, self.latency)
        if self.hang_seconds > 0 and not self.hang_after_store:
            await self._delay(request, self.hang_seconds)
        # Kong jwt (priority 1450)
        if self.key is not None and request.headers.get("Authorization") != f"Bearer {self.key}":
            return _json(401, b'{"message":"Unauthorized"}'), 0
        if request.method != "POST":
            # Express has no GET/HEAD route here: finalhandler's 404, not 405.
            return _express_error(404, f"Cannot {request.method} {request.path}"), 0
        # content.read(), not request.read(): no 1 MB client_max_size, and still compressed
        # (auto_decompress=False) so the wire size below is the real one.
        body = await request.content.read()
        wire = len(body)
        # Kong request-size-limiting (951) checks the bytes on the wire, i.e. compressed.
        if wire > self.max_wire_bytes:
            return _json(413, b'{"message":"Request size limit exceeded"}'), 0
        # Kong rate-limiting (910)
        rate = self._rate
        if rate.remaining > 0:
            rate.remaining -= 1
            msg = (
                b'{"message":"API rate limit exceeded"}' if rate.status == 429 else b'{"message":"Service unavailable"}'
            )
            return _json(rate.status, msg, {"Retry-After": str(rate.retry_after)}), 0
        # The service: body-parser json({limit: '5mb'}) with inflate.
        ctype = request.headers.get("Content-Type")
        cenc = request.headers.get("Content-Encoding")
        mtype = (ctype or "").split(";", 1)[0].strip().lower()
        if mtype != "application/json" or wire == 0:
            reason = "empty body" if wire == 0 else f"Content-Type {ctype!r} is not application/json"
            self.ignored_requests.append(IgnoredRequest(request.path, ctype, cenc, wire, reason))
            return _success(), 0
        try:
            enc = (cenc or "identity").strip().lower()
            raw = _inflate(body, enc, self.max_json_bytes)
        except _HttpError as exc:
            return _express_error(exc.status, exc.text), 0
        digest = _digest(raw)
        if digest is None:
            return _express_error(400, "Bad Request"), 0
        request[_DIGEST] = digest  # for the attempt record
        if self.reject_mids:
            bad = [m for m in digest.mids if m in self.reject_mids]
            if bad:
                errmsg = "invalid events: " + ", ".join(dict.fromkeys(bad))
                return _envelope(400, {"err": "INVALID_EVENT", "errmsg": errmsg}, "CLIENT_ERROR"), 0
        if self.fail_rate > 0 and self.random.random() < self.fail_rate:
            return _envelope(500, {"err": "Request failed"}, "SERVER_ERROR"), 0
        reset = self.reset_rate > 0 and self.random.random() < self.reset_rate
        if reset and not self.reset_after_store:
            _reset(request)
            return None, 0
        self._store(request, digest, body, enc, cenc)
        if reset:
            _reset(request)
            return None, digest.event_count
        if self.hang_seconds > 0 and self.hang_after_store:
            await self._delay(request, self.hang_seconds)
        return _success(), digest.event_count

    def _store(self, request: web.BaseRequest, digest: _Digest, body: bytes, enc: str, cenc: str | None) -> None:
        h = request.headers
        mids = digest.mids
        self.batches.append(
            BatchRecord(
                request.path, digest.msgid, digest.mid, digest.did,
                h.get("X-Channel-Id"), h.get("X-App-Id"), h.get("X-Device-Id"), cenc,
                digest.event_count, len(body), mids, time.time(),
            )
        )  # fmt: skip
        if self.record_events and digest.event_count:
            self._bodies.append((body, enc))
        self.received_mids.extend(mids)
        self.mids.update(mids)
        if self._waiters:
            self._wake_waiters()

    async def _delay(self, request: web.BaseRequest, seconds: float) -> None:
        await asyncio.sleep(seconds)
        # Without handler cancellation a client that timed out would still get its events stored.
        if request.transport is None or request.transport.is_closing():
            raise _ClientGone

    # -- control API ----------------------------------------------------------------------------

    async def _handle_control_only(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await self._control(request)
        return _json(404, b'{"message":"control port"}')

    async def _control(self, request: web.BaseRequest) -> web.Response:
        """``GET /_state[?mids=1]`` and ``POST /_control`` for a fake running in another process."""
        if request.path == "/_state" and request.method == "GET":
            state = self.counters | {"faults": self._fault_state()}
            if request.query.get("mids") not in (None, "", "0"):
                state["mids"] = list(self.mids)
            return _json(200, orjson.dumps(state))
        if request.path == "/_control" and request.method == "POST":
            try:
                await self._apply_control(orjson.loads(await request.read()))
            except (ValueError, TypeError, KeyError) as exc:
                return _json(400, orjson.dumps({"error": str(exc)}))
            return _json(200, orjson.dumps(self.counters | {"faults": self._fault_state()}))
        return _json(404, b'{"message":"unknown control endpoint"}')

    async def _apply_control(self, cmd: Any) -> None:
        """Apply one control document: actions first, then fault values, then link state."""
        if not isinstance(cmd, dict):
            raise ValueError("control body must be a JSON object")
        cmd = dict(cmd)
        if cmd.pop("reset_faults", False):
            self.reset_faults()
        if cmd.pop("clear", False):
            self.clear()
        if "rate_limit" in cmd:
            rl = cmd.pop("rate_limit")
            self.rate_limit(int(rl["count"]), int(rl.get("retry_after", 1)), int(rl.get("status", 429)))
        if "record_events" in cmd:
            self.record_events = bool(cmd.pop("record_events"))
        flap = cmd.pop("flap", ...)
        down = cmd.pop("down", None)
        down_for = cmd.pop("down_for", None)
        self.configure(**cmd)
        loop = asyncio.get_running_loop()
        # Defer link changes so this very answer still reaches the caller.
        if flap is None and self._flap_task is not None:
            self._flap_task.cancel()
            self._flap_task = None
        elif flap is not ...:
            up_s, down_s = (float(x) for x in flap)
            loop.call_later(0.05, self.flap, up_s, down_s)
        if down is True or down_for is not None:
            loop.call_later(0.05, self._spawn, self._down_for(down_for))
        elif down is False:
            await self.up()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # keep a reference until done, else the task may be collected
        task.add_done_callback(self._background.discard)

    async def _down_for(self, seconds: float | None) -> None:
        await self.down()
        if seconds is not None:
            await asyncio.sleep(float(seconds))
            await self.up()

    def _fault_state(self) -> dict[str, Any]:
        faults = {name: getattr(self, name) for name in _Faults.__dataclass_fields__}
        faults["reject_mids"] = sorted(self.reject_mids)
        faults["rate_limit"] = {
            "count": self._rate.remaining,
            "retry_after": self._rate.retry_after,
            "status": self._rate.status,
        }
        faults["flapping"] = self._flap_task is not None
        faults["record_events"] = self.record_events
        return faults


# -- helpers --------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(slots=True)
class _Digest:
    """What the fake keeps of a parsed batch; the parsed tree itself is dropped at once."""

    msgid: Any
    mid: Any
    did: Any
    event_count: int
    mids: list[str]


def _digest(raw: bytes) -> _Digest | None:
    """Parse a batch and keep only what is recorded; None for what body-parser answers 400.

    The cyclic GC is held off while the tree exists: a 200-event batch is ~2,400 containers, which
    would trigger several collections per request (~40% of the capacity) though the tree is
    acyclic and freed by refcount before the GC is enabled again (which also returns the
    allocation count to where it was).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if isinstance(doc, list):  # accepted by body-parser, but not an envelope
            return _Digest(None, None, None, 0, [])
        if not isinstance(doc, dict):  # body-parser strict mode
            return None
        events = doc.get("events")
        if not isinstance(events, list):
            events = []
        params = doc.get("params")
        params = params if isinstance(params, dict) else {}
        mids = [m for e in events if isinstance(e, dict) and isinstance(m := e.get("mid"), str)]
        return _Digest(params.get("msgid"), doc.get("mid"), params.get("did"), len(events), mids)
    finally:
        doc = events = params = None
        if was_enabled:
            gc.enable()


def _inflate(body: bytes, encoding: str, limit: int | None) -> bytes:
    """Inflate as body-parser does: gzip/deflate/identity, 415 otherwise, 413 past ``limit`` inflated."""
    if encoding == "identity":
        if limit is not None and len(body) > limit:
            raise _HttpError(413, "Payload Too Large")
        return body
    if encoding not in ("gzip", "deflate"):
        raise _HttpError(415, "Unsupported Media Type")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, 0 if limit is None else limit + 1)  # bounded: no gzip bomb
    except zlib.error:
        raise _HttpError(400, "Bad Request") from None
    if limit is not None and len(out) > limit:
        raise _HttpError(413, "Payload Too Large")
    if not d.eof:
        raise _HttpError(400, "Bad Request")  # truncated stream: zlib "unexpected end of file"
    return out


def _bound_port(site: web.TCPSite) -> int:
    server = site._server
    assert server is not None
    return int(server.sockets[0].getsockname()[1])


def _ets() -> int:
    return int(time.time() * 1000)


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, headers=_JSON | headers if headers else _JSON)


def _success() -> web.Response:
    return _json(200, b'{"id":"api.telemetry","ver":"1.0","ets":%d,"params":{},"responseCode":"SUCCESS"}' % _ets())


def _envelope(status: int, params: dict[str, Any], code: str) -> web.Response:
    doc = {"id": "api.telemetry", "ver": "1.0", "ets": _ets(), "params": params, "responseCode": code}
    return _json(status, orjson.dumps(doc))


def _express_error(status: int, text: str) -> web.Response:
    """Express finalhandler's HTML page (production mode): not JSON, a client must cope."""
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n'
        f"</head>\n<body>\n<pre>{text}</pre>\n</body>\n</html>\n"
    )
    return web.Response(status=status, body=html.encode(), headers=_HTML)


def _reset(request: web.BaseRequest) -> None:
    """Send half a status line, then drop the connection: the client cannot know if it was stored."""
    transport = request.transport
    if transport is not None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: applic")
        transport.close()


# -- standalone -----------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fake Sunbird telemetry upstream with fault injection.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (see the 'listening' line)")
    p.add_argument("--control-port", type=int, default=None, help="separate control port that stays up while down")
    p.add_argument("--key", default=None, help="accepted API key (Authorization: Bearer KEY); none = no auth")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--hang-seconds", type=float, default=0.0)
    p.add_argument("--hang-after-store", action="store_true")
    p.add_argument("--reset-rate", type=float, default=0.0)
    p.add_argument("--reset-after-store", action="store_true")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--max-wire-bytes", type=int, default=KONG_MAX_WIRE_BYTES)
    p.add_argument("--max-json-bytes", type=int, default=EXPRESS_JSON_LIMIT)
    p.add_argument("--reject-mid", action="append", default=[], help="repeatable")
    p.add_argument("--answer", choices=ANSWERS, default=None, help="something else answers in upstream's place")
    p.add_argument("--rate-limit", type=int, default=0, help="answer the first K requests 429/503")
    p.add_argument("--retry-after", type=int, default=1)
    p.add_argument("--rate-limit-status", type=int, default=429, choices=(429, 503))
    p.add_argument("--no-record-events", action="store_true", help="keep only mids (less memory)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeUpstream(
        key=args.key, fail_rate=args.fail_rate, hang_seconds=args.hang_seconds,
        hang_after_store=args.hang_after_store, reset_rate=args.reset_rate,
        reset_after_store=args.reset_after_store, latency=args.latency,
        max_wire_bytes=args.max_wire_bytes, max_json_bytes=args.max_json_bytes,
        reject_mids=args.reject_mid, record_events=not args.no_record_events,
        log_requests=not args.quiet, seed=args.seed,
    )  # fmt: skip
    if args.answer:
        fake.answer = args.answer
    if args.rate_limit:
        fake.rate_limit(args.rate_limit, args.retry_after, args.rate_limit_status)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await fake.start(args.host, args.port, args.control_port)
    try:
        print(f"listening {fake.url}", flush=True)
        if args.control_port is not None:
            print(f"control {fake.control_url}", flush=True)
        await stopping.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    """Run until SIGTERM/SIGINT; per-request logs go to stderr so stdout stays parseable."""
    args = _parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
