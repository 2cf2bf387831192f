"""The one HTTP client the CLI uses to talk to a running hub (status, sync, dead letters, import, export)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import HubError

__all__ = ["HubClient", "error_text", "hub_url", "local_url"]

_CHUNK = 256 * 1024
# Uploads and exports of big files over a slow Wi-Fi: no limit on the whole, only on silence.
_TRANSFER_TIMEOUT_S = 600.0


def local_url(cfg: Config) -> str:
    """The URL of the hub the local config describes (its HTTPS port when TLS is on: admin paths are
    HTTPS only then; the CLI pins the certificate it reads from the hub's own files)."""
    host = cfg.server.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    if cfg.tls.enabled:
        return f"https://{host}:{cfg.tls.port}"
    return f"http://{host}:{cfg.server.port}"


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS to a hub whose certificate must have exactly this SHA-256 (no CA, no host name check)."""

    def __init__(self, *args: Any, pin: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pin = pin

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) if isinstance(self.sock, ssl.SSLSocket) else None
        if not der or hashlib.sha256(der).hexdigest() != self.pin:
            self.sock.close()
            raise OSError(
                0, "its certificate is not this hub's (the fingerprint differs): something else answers there"
            )


class _PinnedHandler(urllib.request.HTTPSHandler):
    def __init__(self, pin: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the fingerprint is checked instead, in _PinnedConnection
        super().__init__(context=ctx)
        self.pin = pin

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(
            lambda *a, **kw: _PinnedConnection(*a, pin=self.pin, **kw),
            req,
            context=self._context,  # type: ignore[attr-defined]  # HTTPSHandler keeps its context there
        )


def hub_url(url: str) -> str:
    """A hub URL as given on the command line: scheme added when missing, no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else "http://" + url


def error_text(answer: Any) -> str:
    """The human part of an error answer (Sunbird errmsg or a plain message)."""
    if isinstance(answer, dict):
        params = answer.get("params")
        if isinstance(params, dict) and params.get("errmsg"):
            return str(params["errmsg"])
        for key in ("error", "message"):
            if answer.get(key):
                return str(answer[key])
    return str(answer)


def _words(reason: object) -> str:
    """An OS error as words ("connection refused"), not an errno tuple."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"error": raw[:300].decode("utf-8", "replace")}


class HubClient:
    """JSON over HTTP to one hub, with errors turned into sentences for branch IT."""

    def __init__(self, url: str, token: str = "", timeout: float = 30.0, *, hint: str = "", pin: str = "") -> None:
        self.url = hub_url(url)
        self.token = token
        self.timeout = timeout
        self.hint = hint  # how this hub was found, said when it cannot be reached or refuses
        # With `pin` (a certificate's SHA-256), HTTPS goes only to a hub with exactly that certificate.
        self._opener = urllib.request.build_opener(_PinnedHandler(pin)) if pin else None

    def _open(self, req: urllib.request.Request, timeout: float | None) -> HTTPResponse:
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            opened = self._opener.open if self._opener is not None else urllib.request.urlopen
            response: HTTPResponse = opened(req, timeout=timeout or self.timeout)
            return response
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            where = f"; {self.hint}" if self.hint else ""
            raise HubError(
                f"cannot reach the hub at {self.url} ({_words(reason)}); is it running? "
                f"(`systemctl status telemetry-hub`, or pass --url){where}"
            ) from None

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON answer)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._open(req, timeout) as r:
                return r.status, _parse(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _parse(exc.read())

    def _refused(self, exc: urllib.error.HTTPError) -> HubError:
        return HubError(f"the hub at {self.url} answered {exc.code}: {error_text(_parse(exc.read()))}")

    def upload(self, path: str, files: Sequence[Path]) -> Any:
        """POST files as multipart/form-data, streamed from disk (never whole in memory); the JSON answer."""
        boundary = uuid.uuid4().hex
        heads = [
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{urllib.parse.quote(f.name)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            for f in files
        ]
        end = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + f.stat().st_size + 2 for h, f in zip(heads, files, strict=True)) + len(end)

        def body() -> Iterator[bytes]:
            for head, f in zip(heads, files, strict=True):
                yield head
                with open(f, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        yield chunk
                yield b"\r\n"
            yield end

        req = urllib.request.Request(self.url + path, data=body(), method="POST")
        req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        req.add_header("Content-Length", str(length))
        req.add_header("Accept", "application/json")
        try:
            with self._open(req, _TRANSFER_TIMEOUT_S) as r:
                return _parse(r.read())
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None

    def download(self, path: str, query: dict[str, str], out: Path) -> dict[str, str]:
        """GET a file into `out` (written beside it, fsynced, renamed in); the answer's headers."""
        req = urllib.request.Request(self.url + path + "?" + urllib.parse.urlencode(query))
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    with self._open(req, _TRANSFER_TIMEOUT_S) as r:
                        headers = dict(r.headers.items())
                        while chunk := r.read(_CHUNK):
                            fh.write(chunk)
                except urllib.error.HTTPError as exc:
                    raise self._refused(exc) from None
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return headers
