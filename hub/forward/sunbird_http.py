"""The Sunbird HTTP sink: batches POSTed to the institute's telemetry API as the mobile app sends them."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from yarl import URL

from ..config import UpstreamConfig
from ..secrets import KeyFile
from ..store import Batch
from ..telemetry import batch_envelope
from .sink import Encoded, Outcome

__all__ = [
    "SunbirdHttpSink",
    "answer_says",
    "classify",
    "header_safe",
    "redirect_target",
    "retry_after_seconds",
    "without_credentials",
]

log = logging.getLogger(__name__)

# Upstream's JSON limit after decompression is 5 MB; stay under it whatever batch_bytes says.
_MAX_JSON_BYTES = 4_500_000
# Longest Retry-After honoured as given (seconds); anything longer is capped.
_MAX_RETRY_AFTER_S = 3600.0
# gzip level: 6 is what zlib defaults to; 5 costs less CPU on a Pi for nearly the same bytes.
_GZIP_LEVEL = 5
# How much of upstream's answer is read: enough for any telemetry API answer (or another hub's, with its
# per-event quarantine list), never a whole portal page (the rest of the body is dropped with the connection).
_ANSWER_BYTES = 8192
# Longest X-Channel-Id / X-App-Id / X-Device-Id value sent as it is; longer ones fall back (see header_safe).
_HEADER_MAX_CHARS = 256
# A refusal of the data itself in a 2xx answer (the legacy EkStep API; sunbird-contract.md 1.6).
_EKSTEP_INVALID = "INVALID_DATA_ERROR"
# When a cut-off answer cannot be parsed as JSON: its acknowledgement, found in the part that was read.
_ACK_IN_TEXT = re.compile(r'"(?:responseCode"\s*:\s*"(?:SUCCESS|OK)|status"\s*:\s*"successful)"', re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>([^<]*)", re.IGNORECASE)


def without_credentials(url: str) -> str:
    """The URL with any user:password removed (for logs and pages)."""
    if not url:
        return ""
    try:
        return str(URL(url).with_user(None))
    except ValueError:
        return url


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now (delta seconds or an HTTP date), capped; None if absent or unreadable."""
    if not value:
        return None
    try:
        return min(_MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        try:
            when = datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
        except ValueError:
            return None
        now = now or datetime.now(UTC)
        return min(_MAX_RETRY_AFTER_S, max(0.0, (when - now).total_seconds()))


def redirect_target(base: str, location: str | None) -> str:
    """Where a redirect points, fit for logs: resolved against `base`, without user:password, query or fragment."""
    if not location:
        return "(no Location given)"
    try:
        target = URL(base).join(URL(location)).with_user(None).with_query(None).with_fragment(None)
        text = str(target)
    except (ValueError, TypeError):
        return "(an unreadable Location)"
    return text if len(text) <= 300 else text[:300] + "..."


def header_safe(value: str | None) -> bool:
    """Whether `value` can go in an HTTP header as it is: printable ASCII, no CR/LF or control characters,
    no surrounding spaces, at most _HEADER_MAX_CHARS characters.

    Not latin-1: aiohttp writes header values as UTF-8, so an "é" would reach upstream as two bytes that
    Node reads as two other characters, i.e. a different channel than the events name.
    """
    return (
        bool(value)
        and value is not None
        and len(value) <= _HEADER_MAX_CHARS
        and value.isascii()
        and value.isprintable()
        and value == value.strip()
    )


def network_words(exc: BaseException) -> str:
    """A network failure in words ("connection refused"), never an errno tuple or a Python class name."""
    os_error = getattr(exc, "os_error", None) or exc
    number = getattr(os_error, "errno", None)
    if isinstance(number, int) and number > 0:
        return os.strerror(number).lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    text = str(exc).strip()
    return text if text and "Errno" not in text else "the connection broke"


def answer_says(text: str) -> str | None:
    """What a 2xx body says as a Sunbird telemetry API answer (the service's, the standard envelope, legacy
    EkStep or another hub's): "ok", "invalid" (EkStep refused the data), "failed", or None when the body
    is no such answer at all (an HTML page, an empty body, some other JSON)."""
    try:
        doc: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        # Cut off at _ANSWER_BYTES (a long answer from another hub): its acknowledgement comes first.
        return "ok" if text.lstrip().startswith("{") and _ACK_IN_TEXT.search(text) else None
    if not isinstance(doc, dict):
        return None
    params = doc.get("params")
    params = params if isinstance(params, dict) else {}
    code, status, err = doc.get("responseCode"), params.get("status"), params.get("err")
    if isinstance(code, str) and code.upper() in ("SUCCESS", "OK"):
        return "ok"
    if isinstance(status, str) and status.lower() == "successful":
        return "ok"
    if err == _EKSTEP_INVALID:
        return "invalid"
    if isinstance(code, str) or (isinstance(status, str) and status.lower() == "failed"):
        return "failed"
    return None


def _what_answered(text: str) -> str:
    """A short description of a body that is not upstream's answer, for the log and the status page."""
    body = text.strip()
    if not body:
        return "an empty body"
    title = _TITLE.search(body)
    if title:
        words = " ".join(title.group(1).split())[:120]
        return f"an HTML page titled {words!r}" if words else "an HTML page"
    if body[:1] == "<":
        return "an HTML page"
    return "an answer that is not the telemetry API's: " + " ".join(body.split())[:120]


def classify(status: int, text: str, retry_after: str | None, location: str | None = None) -> Outcome:
    """What an HTTP answer from upstream means for the batch.

    Only upstream can acknowledge: a 2xx is `ok` only with a telemetry API answer in the body. A captive
    portal, a data-pack page or a proxy answers 200 too, with its own page, and then nothing was delivered.
    `location` is the redirect target of a 3xx (see redirect_target), which is never followed.
    """
    message = text.strip().replace("\n", " ")[:300] or f"HTTP {status}"
    if 200 <= status < 300:
        says = answer_says(text)
        if says == "ok":
            return Outcome("ok", status)
        if says == "invalid":
            return Outcome("bad-request", status, message)
        if says == "failed":
            return Outcome("server", status, message)
        return Outcome("intercepted", status, f"HTTP {status} with {_what_answered(text)}")
    if 300 <= status < 400:
        where = location or "(no Location given)"
        return Outcome("moved", status, f"upstream answered a redirect (HTTP {status}) to {where}: update upstream.url")
    if status in (401, 403):
        return Outcome("auth", status, message)
    if status == 413:
        return Outcome("too-large", status, message)
    if status in (429, 503) and retry_after is not None:
        return Outcome("throttled", status, message, retry_after_seconds(retry_after))
    if status == 429:
        return Outcome("throttled", status, message)
    if 400 <= status < 500:
        return Outcome("bad-request", status, message)
    return Outcome("server", status, message)


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """At most `limit` bytes of a body (a portal's page can be megabytes; only its start matters)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class SunbirdHttpSink:
    """POSTs gzip batch envelopes with the hub's device id and key; upstream dedups by params.msgid."""

    name = "sunbird-http"

    def __init__(self, cfg: UpstreamConfig, url: str, device_id: str) -> None:
        self.cfg = cfg
        self.url = url
        self.device_id = device_id
        self.max_request_bytes = cfg.batch_bytes
        # Compressed size is unknown until gzip has run; assume at least 4:1 for telemetry JSON.
        self.max_json_bytes = min(_MAX_JSON_BYTES, cfg.batch_bytes * (4 if cfg.gzip else 1))
        self.key = KeyFile(cfg.api_key_file, cfg.api_key_env)
        self._session: aiohttp.ClientSession | None = None
        self._key_warned = False
        self._header_warned: set[str] = set()
        # The hub id is safe; a configured upstream.device_id might not be: then upstream gets it in params.did only.
        self._device_header = device_id if header_safe(device_id) else None
        if self._device_header is None:
            log.warning("upstream.device_id %r cannot be sent as an HTTP header; sending no X-Device-Id", device_id)

    def describe(self) -> str:
        """The upstream URL without credentials."""
        return without_credentials(self.url)

    def credentials_stamp(self) -> object:
        """The key file's (mtime, size) as last read."""
        self.key.value()
        return self.key.stamp

    async def start(self) -> None:
        """Open the HTTP session (one, kept alive across batches)."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout, sock_connect=self.cfg.connect_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=True)

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def encode(self, batch: Batch, rows: Sequence[tuple[int, str, bytes]]) -> Encoded:
        """The mobile app's envelope around the events' own bytes, gzipped off the event loop."""
        ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = batch_envelope([r[2] for r in rows], batch.msgid, self.device_id, ts)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._device_header:
            headers["X-Device-Id"] = self._device_header
        # Ids come from the events (a batch holds one channel and producer): a device may send anything there.
        # One that cannot be a header (CR/LF, control characters, too long, not ASCII) would make aiohttp
        # refuse the request, or upstream answer 400, for every retry; the configured id goes instead.
        # The events' bytes still carry the real ids, unchanged.
        channel = self._header_id("X-Channel-Id", batch.channel, self.cfg.channel_id)
        app_id = self._header_id("X-App-Id", batch.pdata_id, self.cfg.app_id)
        if channel:
            headers["X-Channel-Id"] = channel
        if app_id:
            headers["X-App-Id"] = app_id
        if self.cfg.gzip:
            body = await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return Encoded(batch, rows, body, headers)

    async def send(self, encoded: Encoded) -> tuple[Outcome, int]:
        """POST one batch; the key is read now, not when encoded, so a fixed key takes effect at once."""
        body, headers = encoded.body, dict(encoded.headers)
        key = self.key.value()
        if self.key.problem and not self._key_warned:
            log.warning("%s; sending without a key until it is readable", self.key.problem)
        self._key_warned = bool(self.key.problem)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if len(body) > self.max_request_bytes and len(encoded.rows) > 1:
            # Too big on the wire before upstream even sees it: treat like a 413.
            return Outcome("too-large", None, f"batch is {len(body)} bytes, over upstream.batch_bytes"), 0
        if self._session is None:
            return Outcome("error", None, "the HTTP session is not open"), 0
        answered = False
        try:
            # Redirects are never followed. aiohttp would turn the POST into a GET on a 301/302/303 (the
            # batch is gone, the GET's 200 looks like an acknowledgement), and on a 307/308 re-send the body
            # and the key to whatever host the Location names. Nor is the batch re-sent to the Location by
            # hand: the key must only ever go to upstream.url, and an http -> https upgrade (the usual
            # redirect) is a config change branch IT should make once, not a detour on every batch.
            async with self._session.post(self.url, data=body, headers=headers, allow_redirects=False) as r:
                answered = True
                raw = await _read_bounded(r.content, _ANSWER_BYTES)
                if not r.content.at_eof():
                    r.close()  # a big page: drop the connection rather than read the rest of it
                location = redirect_target(self.url, r.headers.get("Location")) if 300 <= r.status < 400 else None
                outcome = classify(r.status, raw.decode("utf-8", "replace"), r.headers.get("Retry-After"), location)
                return outcome, len(body)
        except TimeoutError:
            return Outcome("network", None, f"no answer within {self.cfg.timeout:g} s (upstream.timeout)"), len(body)
        except aiohttp.ClientConnectorError as exc:
            return Outcome("network", None, f"cannot connect to {exc.host}:{exc.port}: {network_words(exc)}"), 0
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome("network", None, f"connection failed: {network_words(exc)}"), len(body)
        except asyncio.CancelledError:
            raise
        except (ValueError, TypeError, UnicodeError, LookupError) as exc:
            if not answered:
                # aiohttp would not even build the request from this batch (nothing was sent): the same
                # batch would fail the same way forever, so it is isolated like a batch upstream refuses.
                why = f"the hub could not build the request: {type(exc).__name__}: {exc}"
                return Outcome("bad-request", None, why), 0
            return Outcome("error", None, f"reading upstream's answer failed: {type(exc).__name__}: {exc}"), len(body)
        except Exception as exc:  # whatever else: the loop backs off and tries the same batch again
            return Outcome("error", None, f"unexpected {type(exc).__name__}: {exc}"), len(body)

    def _header_id(self, header: str, value: str | None, fallback: str) -> str | None:
        """`value` if it can be sent as a header, else the configured `fallback` (if that can), else None."""
        if header_safe(value):
            return value
        if value and header not in self._header_warned:
            self._header_warned.add(header)
            log.warning(
                "an event id cannot be sent as %s (%d characters, control characters or not ASCII: %r); "
                "sending %s instead, the events themselves go unchanged",
                header,
                len(value),
                value[:40],
                repr(fallback) if header_safe(fallback) else "none",
            )
        return fallback if header_safe(fallback) else None

    async def probe(self) -> bool:
        """A HEAD of the server's root: any HTTP answer means the WAN works."""
        if self._session is None:
            return False
        base = self.url.split("/", 3)
        target = "/".join(base[:3]) + "/"
        try:
            async with self._session.head(target, timeout=aiohttp.ClientTimeout(total=self.cfg.connect_timeout)) as r:
                await r.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("probe of %s failed: %s", without_credentials(target), exc)
            return False
        return True


SINKS = {SunbirdHttpSink.name: SunbirdHttpSink}
