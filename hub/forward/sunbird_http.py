"""The Sunbird HTTP sink: batches POSTed to the institute's telemetry API as the mobile app sends them."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp
from yarl import URL

from ..config import UpstreamConfig
from ..secrets import KeyFile
from ..store import Batch
from ..telemetry import batch_envelope
from .sink import Encoded, Outcome

__all__ = ["SunbirdHttpSink", "classify", "retry_after_seconds", "without_credentials"]

log = logging.getLogger(__name__)

# Upstream's JSON limit after decompression is 5 MB; stay under it whatever batch_bytes says.
_MAX_JSON_BYTES = 4_500_000
# Longest Retry-After honoured as given (seconds); anything longer is capped.
_MAX_RETRY_AFTER_S = 3600.0
# gzip level: 6 is what zlib defaults to; 5 costs less CPU on a Pi for nearly the same bytes.
_GZIP_LEVEL = 5
# How much of upstream's answer is kept for the log and the status page.
_ANSWER_CHARS = 2000


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


def classify(status: int, text: str, retry_after: str | None) -> Outcome:
    """What an HTTP answer from upstream means for the batch."""
    if 200 <= status < 300:
        return Outcome("ok", status)
    message = text.strip().replace("\n", " ")[:300] or f"HTTP {status}"
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
        headers = {"Content-Type": "application/json", "Accept": "application/json", "X-Device-Id": self.device_id}
        channel = batch.channel or self.cfg.channel_id
        app_id = batch.pdata_id or self.cfg.app_id
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
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self.url, data=body, headers=headers) as r:
                text = (await r.read())[:_ANSWER_CHARS].decode("utf-8", "replace")
                return classify(r.status, text, r.headers.get("Retry-After")), len(body)
        except TimeoutError:
            return Outcome("network", None, f"no answer within {self.cfg.timeout:g} s (upstream.timeout)"), len(body)
        except aiohttp.ClientConnectorError as exc:
            return Outcome("network", None, f"cannot connect: {exc.os_error or exc}"), 0
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome("network", None, f"connection failed: {type(exc).__name__}: {exc}"), len(body)

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
