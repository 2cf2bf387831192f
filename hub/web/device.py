"""The device-facing Sunbird telemetry API: auth, size limits, gzip, then hand-over to the store."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..config import LimitsConfig, StoreConfig
from ..errors import BadRequest, StoreClosed, StoreFull, StoreUnavailable
from ..schema import SchemaChecker
from ..secrets import parse_device_keys
from ..store import Store
from ..telemetry import check_events, split_envelope, success_body
from .responses import answer_and_close, json_response, sunbird_error

__all__ = ["DEVICE_PATHS", "RECEIPTS_PATH", "Ingest", "IngestCounters", "KeyRing"]

log = logging.getLogger(__name__)

# The paths real Sunbird clients post to: mobile/JS library, the service itself, portal and desktop.
DEVICE_PATHS = ("/api/data/v1/telemetry", "/v1/telemetry", "/content/data/v1/telemetry", "/action/data/v3/telemetry")
# Where a device asks what became of its events (web.receipts); CORS like the device paths.
RECEIPTS_PATH = "/api/data/v1/telemetry/receipts"
_CORS_PATHS = frozenset((*DEVICE_PATHS, RECEIPTS_PATH))

_CORS_HEADERS = ", ".join(
    [
        "Authorization",
        "Content-Type",
        "Content-Encoding",
        "Accept",
        "X-App-Id",
        "X-Channel-Id",
        "X-Device-Id",
        "X-Authenticated-User-Token",
        "X-Authenticated-For",
        "X-Consumer-ID",
        "X-Request-ID",
        "X-Source",
        "X-msgid",
        "ts",
        "dataType",
        "did",
        "msgid",
        "Access-Control-Allow-Origin",
    ]
)
_READ_CHUNK = 64 * 1024
# How often the device keys file is looked at for changes (seconds): a revoked key stops within this.
_KEYS_CHECK_S = 1.0
# Seconds a device is told to wait when the hub already buffers limits.max_buffered_bytes of bodies.
_BUSY_RETRY_AFTER_S = 5


class _Overloaded(Exception):
    """Bodies already buffered for other requests use up limits.max_buffered_bytes."""


class _Hold:
    """The bytes one request has buffered, counted against limits.max_buffered_bytes until it is answered."""

    __slots__ = ("ingest", "n")

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.n = 0

    def take(self, n: int) -> None:
        ing = self.ingest
        # A request alone is always let through (its own limits bound it), so one big body cannot wedge the hub.
        if ing.buffered + n > ing.limits.max_buffered_bytes and ing.buffered > self.n:
            raise _Overloaded
        ing.buffered += n
        self.n += n

    def release(self) -> None:
        self.ingest.buffered -= self.n
        self.n = 0


class KeyRing:
    """Device API keys, compared in constant time; empty (and no file) means devices need no key.

    With a keys file, the file is looked at again at most once a second and on reload() (SIGHUP,
    `systemctl reload`), so a revoked key is refused within seconds without a restart. A file that
    becomes unreadable or empty refuses every key (fail closed) until it is fixed.
    """

    def __init__(self, keys: Iterable[str] = (), path: Path | None = None) -> None:
        self._keys = [k.encode() for k in keys if k]
        self.path = path
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self._problem: str | None = None

    @property
    def required(self) -> bool:
        return bool(self._keys) or self.path is not None

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self, force: bool = True) -> None:
        """Re-read the keys file if it changed (or always, with force)."""
        if self.path is None:
            return
        stamp = self._stat()
        if not force and stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = parse_device_keys(self.path.read_text("utf-8"))
            problem = None if keys else f"auth.device_keys_file {self.path} holds no key"
        except OSError as exc:
            keys, problem = [], f"cannot read auth.device_keys_file {self.path}: {exc.strerror}"
        self._keys = [k.encode() for k in keys]
        if problem:
            if problem != self._problem:
                log.error("%s; every device key is refused until it is fixed", problem)
        else:
            log.info("device keys read from %s: %d key%s", self.path, len(keys), "s" if len(keys) != 1 else "")
        self._problem = problem

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization: Bearer <key>` header carries a known key."""
        if self.path is not None and time.monotonic() - self._checked >= _KEYS_CHECK_S:
            self._checked = time.monotonic()
            self.reload(force=False)
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        token = given.strip().encode()
        if scheme.lower() != "bearer" or not token:
            return False
        ok = False
        for key in self._keys:  # no early exit: the time taken does not reveal which key matched
            ok |= hmac.compare_digest(key, token)
        return ok


@dataclass
class IngestCounters:
    """Per-outcome request counts, read by metrics and the status page."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    client_errors: dict[str, int] = field(default_factory=dict)


class Ingest:
    """Turns one device request into stored events and a Sunbird answer."""

    def __init__(
        self,
        store: Store,
        limits: LimitsConfig,
        store_cfg: StoreConfig,
        keys: KeyRing,
        client_timeout: float,
        schema: SchemaChecker | None = None,
        tells_time: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.tells_time = tells_time  # whether answers may carry the hub's time (hub.clock); None: always
        self.limits = limits
        self.store_cfg = store_cfg
        self.keys = keys
        self.client_timeout = client_timeout
        self.schema = schema if schema is not None else SchemaChecker()
        self.counters = IngestCounters()
        self.observers: list[Callable[[int], None]] = []
        self.buffered = 0  # body bytes held by requests in progress (limits.max_buffered_bytes)

    def routes(self) -> list[web.RouteDef]:
        """The device paths, for the composition root to mount."""
        out: list[web.RouteDef] = []
        for path in DEVICE_PATHS:
            out.append(web.post(path, self.handle))
            out.append(web.options(path, self.preflight))
            out.append(web.get(path, self.explain))
        return out

    async def explain(self, request: web.Request) -> web.Response:
        """A browser opening the device URL learns what it is, instead of a bare 405 (says nothing more)."""
        return json_response(
            405,
            {
                "id": "api.telemetry",
                "message": "This is the hub's Sunbird telemetry endpoint: devices POST telemetry events here "
                "(JSON or gzip, as the Sunbird app and telemetry library do). Set this address as the telemetry "
                "URL in the app; the hub's status page is at /.",
            },
            {"Allow": "POST, OPTIONS"},
        )

    @web.middleware
    async def cors(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Add CORS headers to device answers (web players are often served from another origin)."""
        response = await handler(request)
        if request.path in _CORS_PATHS:
            response.headers.update(self._cors_headers(request))
        return response

    @staticmethod
    def _cors_headers(request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        return {
            "Access-Control-Allow-Origin": origin or "*",
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": _CORS_HEADERS,
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        }

    async def preflight(self, request: web.Request) -> web.Response:
        """Answer a CORS preflight (the CORS middleware adds the headers)."""
        return web.Response(status=204)

    async def handle(self, request: web.Request) -> web.Response:
        """POST telemetry: 200 only after the commit holding these events has returned."""
        hold = _Hold(self)
        try:
            response = await self._handle(request, hold)
        finally:
            hold.release()  # after the commit: until then the events' bytes are still in memory
        c = self.counters
        c.requests += 1
        c.by_status[response.status] = c.by_status.get(response.status, 0) + 1
        for observe in self.observers:
            observe(response.status)
        return response

    async def _handle(self, request: web.Request, hold: _Hold) -> web.Response:
        if not self.keys.allows(request.headers.get("Authorization")):
            self._client_error("unauthorized")
            return sunbird_error(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>' with a key this hub knows"
            )
        try:
            body = await self._read_body(request, hold)
            meta, items = split_envelope(body, self.limits.max_events_per_request)
        except BadRequest as exc:
            self._client_error("too_large" if exc.status == 413 else "bad_request")
            log.debug("refused request from %s: %s", request.remote, exc)
            response = sunbird_error(exc.status, str(exc))
            return await answer_and_close(request, response) if exc.status == 408 else response
        except _Overloaded:
            log.debug("busy: %d bytes of bodies buffered (limits.max_buffered_bytes)", self.buffered)
            return sunbird_error(
                503,
                "the hub is busy receiving other devices' data; retry in a few seconds",
                headers={"Retry-After": str(_BUSY_RETRY_AFTER_S)},
            )
        params = meta.get("params")
        msgid = params.get("msgid") if isinstance(params, dict) else None
        if not items:
            self._client_error("bad_request")
            return sunbird_error(400, "'events' is empty: send at least one event", msgid)
        checked = check_events(
            items, max_event_bytes=self.limits.max_event_bytes, schema=self.schema, strict=self.store_cfg.strict_schema
        )
        received = len(items)
        del body, items, meta  # only the checked events' bytes wait for the commit, not the parsed objects
        # Without X-Device-Id (the old JS library omits it) the store takes each event's context.did.
        device = (request.headers.get("X-Device-Id") or "").strip() or None
        retry = {"Retry-After": str(self.store_cfg.retry_after)}
        try:
            result = await self.store.add(checked, source=f"api:{request.remote or '?'}", device=device)
        except (StoreFull, StoreUnavailable) as exc:  # the store logged the cause once; nothing was acknowledged
            return sunbird_error(
                503, f"the hub cannot store telemetry now: {exc}. Keep the events and retry later.", msgid, retry
            )
        except StoreClosed as exc:
            return sunbird_error(503, str(exc), msgid, {"Retry-After": "5"})
        result_body: dict[str, object] = {
            "received": received,
            "accepted": result.new,
            "duplicates": result.duplicates,
            "quarantined": [{"index": q.index, "reason": q.reason} for q in checked.quarantined],
            "warnings": sum(checked.warnings.values()),
        }
        if checked.warnings:  # which checks the warned events broke (stored and forwarded anyway)
            result_body["warning_reasons"] = [{"reason": k, "count": v} for k, v in sorted(checked.warnings.items())]
        ets = self.tells_time() if self.tells_time is not None else True
        return json_response(200, success_body(msgid, result_body, ets=ets))

    def _client_error(self, kind: str) -> None:
        self.counters.client_errors[kind] = self.counters.client_errors.get(kind, 0) + 1

    async def _read_body(self, request: web.Request, hold: _Hold) -> bytes:
        """Read the body within size, time and memory limits, gunzipping as it streams (bombs stop early)."""
        limit = self.limits.max_body_bytes
        out_limit = self.limits.max_decompressed_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(
                f"body is {request.content_length} bytes, over the limit of {limit} (limits.max_body_bytes): "
                "send smaller batches",
                413,
            )
        if request.content_length and self.buffered + request.content_length > self.limits.max_buffered_bytes:
            hold.take(request.content_length)  # refuses now unless this is the only request buffering
            hold.release()
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            inflater = None
        elif encoding in ("gzip", "x-gzip"):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            inflater = zlib.decompressobj()
        else:
            raise BadRequest(f"Content-Encoding {encoding!r} is not supported: send gzip or plain JSON", 415)
        parts: list[bytes] = []
        received = produced = 0
        try:
            async with asyncio.timeout(self.client_timeout):
                while True:
                    chunk = await request.content.read(_READ_CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > limit:
                        raise BadRequest(
                            f"body is over the limit of {limit} bytes (limits.max_body_bytes): send smaller batches",
                            413,
                        )
                    if inflater is None:
                        hold.take(len(chunk))
                        parts.append(chunk)
                        continue
                    while chunk:
                        out = inflater.decompress(chunk, out_limit + 1 - produced)
                        produced += len(out)
                        if produced > out_limit:
                            raise BadRequest(
                                f"body is over {out_limit} bytes once decompressed "
                                "(limits.max_decompressed_bytes): send smaller batches",
                                413,
                            )
                        hold.take(len(out))
                        parts.append(out)
                        chunk = inflater.unconsumed_tail
                        if inflater.eof:
                            break
        except TimeoutError:
            raise BadRequest(
                f"body did not arrive within {self.client_timeout:g} s (server.client_timeout)", 408
            ) from None
        except zlib.error as exc:
            raise BadRequest(
                f"body is not valid gzip ({exc}); send Content-Encoding: gzip only with gzip data"
            ) from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise BadRequest(f"body was cut off: {exc}") from None
        if inflater is not None:
            if not inflater.eof:
                raise BadRequest("body is truncated gzip: the compressed stream ends early")
            if inflater.unused_data.strip(b"\0"):
                raise BadRequest("body has extra data after the gzip stream")
        return b"".join(parts)
