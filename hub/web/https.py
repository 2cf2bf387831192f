"""With TLS on, people's paths (status page, sign-in, admin, import, metrics) are served over HTTPS only.

Anyone on the Wi-Fi can read plain HTTP, and with ARP spoofing change it: a token typed or a session cookie
sent there is taken. So on the plain port a GET or HEAD for such a path is sent on to the HTTPS port (308),
and anything else (a form post, an admin call) is refused with a 403 that says where to go, before it is
read. HTTPS answers carry Strict-Transport-Security, so a browser that has been there once stays on HTTPS.

The device API stays on plain HTTP as well (real clients are configured with one URL and cannot follow a
redirect of a POST), and so does `/health` (for machines; it shows no secret).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .device import DEVICE_PATHS, RECEIPTS_PATH
from .responses import answer_and_close, sunbird_error

__all__ = ["HttpsOnly"]

# Paths that stay on plain HTTP too: the device API (receipts included) and the health check.
_PLAIN_OK = frozenset(DEVICE_PATHS) | {RECEIPTS_PATH, "/health"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpsOnly:
    """Middleware: redirect or refuse people's paths on plain HTTP; HSTS on HTTPS answers.

    Inactive until `tls_port` is set (the composition root sets it once the HTTPS listener is up)."""

    def __init__(self, hsts_seconds: int) -> None:
        self.tls_port: int | None = None
        self.hsts = f"max-age={hsts_seconds}" if hsts_seconds > 0 else ""

    def https_url(self, request: web.Request) -> str:
        """This request's URL on the HTTPS port."""
        assert self.tls_port is not None
        return str(request.url.with_scheme("https").with_port(self.tls_port))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """See the module's docstring."""
        if self.tls_port is None:
            return await handler(request)
        if request.secure:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # a redirect raised by a handler carries the header too
                if self.hsts:
                    exc.headers["Strict-Transport-Security"] = self.hsts
                raise
            if self.hsts and not response.prepared:
                response.headers["Strict-Transport-Security"] = self.hsts
            return response
        if request.path in _PLAIN_OK:
            return await handler(request)
        target = self.https_url(request)
        if request.method in ("GET", "HEAD"):
            return web.Response(status=308, headers={"Location": target, "Cache-Control": "no-store"})
        refusal = sunbird_error(
            403,
            f"this hub takes sign-ins and admin actions over HTTPS only (plain HTTP can be read by anyone on "
            f"the Wi-Fi): send this to {target}",
        )
        return await answer_and_close(request, refusal)  # its body (a token, perhaps) is not read
