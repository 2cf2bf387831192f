"""What branch IT sees over HTTP: /health for machines, the status page at /, /status.json, /metrics."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from aiohttp import web

from ..facts import Here, StatusFacts, page_needs_token
from ..metrics import Metrics
from . import pages
from .admin import AdminGate, token_from, token_refused
from .responses import json_response, see_other

__all__ = ["StatusPages"]

log = logging.getLogger(__name__)

_COOKIE = "hub_status"
_COOKIE_MAX_AGE_S = 180 * 86400  # a phone stays logged in for a school term or two
_COOKIE_LABEL = b"telemetry-hub status page v1"
_BOOKMARK = (
    "Links with ?token= no longer sign you in: the token would end up in the browser's history and in logs. "
    "Type the token once below; this browser then stays signed in."
)


def _here(request: web.Request) -> Here:
    """How this request reached the hub (the real port, even when configured as 0)."""
    scheme = "https" if request.secure else "http"
    port = 0
    if request.transport is not None:
        sockname = request.transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            port = int(sockname[1])
    return Here(scheme, port, request.host)


def _has_route(request: web.Request, path: str) -> bool:
    return any(r.canonical == path for r in request.app.router.resources())


class StatusPages:
    """The status paths; reading status needs the admin token or the login cookie unless on loopback."""

    def __init__(self, facts: StatusFacts, metrics: Metrics, admin: AdminGate, *, cookie_key: str = "") -> None:
        """`cookie_key` is what the login cookie is derived from: pass the admin token, so a new token
        logs every browser out and a restart does not. Empty: a random key, so logins last one run."""
        self.facts = facts
        self.metrics = metrics
        self.admin = admin
        self.needs_token = page_needs_token(facts.cfg)
        key = cookie_key.encode() or secrets.token_bytes(32)
        self._cookie = hmac.new(key, _COOKIE_LABEL, hashlib.sha256).hexdigest()

    def routes(self) -> list[web.RouteDef]:
        """The status paths, for the composition root to mount."""
        return [
            web.get("/health", self.health),
            web.get("/", self.page),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.get("/status.json", self.status_json),
            web.get("/metrics", self.metrics_page),
        ]

    # ---- access ----------------------------------------------------------------------------------------------

    def _presented_token_ok(self, request: web.Request) -> bool:
        presented = token_from(request)
        return bool(presented) and self.admin.allows(presented)

    def _cookie_ok(self, request: web.Request) -> bool:
        value = request.cookies.get(_COOKIE, "")
        return bool(value) and hmac.compare_digest(value.encode(), self._cookie.encode())

    def allowed(self, request: web.Request) -> bool:
        """Whether this request may read status: no token needed, or the token, or the login cookie."""
        return not self.needs_token or self._presented_token_ok(request) or self._cookie_ok(request)

    def _set_cookie(self, response: web.StreamResponse, request: web.Request) -> None:
        response.set_cookie(
            _COOKIE,
            self._cookie,
            max_age=_COOKIE_MAX_AGE_S,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure or None,
        )

    # ---- handlers --------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """Machine-readable health: 200 when the store takes writes, 503 with the reason when not."""
        healthy, body = await self.facts.health()
        return json_response(200 if healthy else 503, body)

    async def page(self, request: web.Request) -> web.Response:
        """The status page for a phone or laptop browser (HTML, no external assets, no script needed)."""
        if not self.allowed(request):
            # A bookmark from before: say why the link no longer signs in, rather than fail silently.
            return pages.login_page(401, _BOOKMARK if "token" in request.query else None)
        facts = await self.facts.facts(_here(request))
        synced = request.query.get("synced")
        response = pages.status_page(
            facts,
            synced=synced if synced in ("0", "1", "denied") else None,
            can_import=_has_route(request, "/import"),
            logged_in=self._cookie_ok(request),
        )
        if self.needs_token and not self._cookie_ok(request):
            self._set_cookie(response, request)  # came with the token in a header: keep it on this browser
        return response

    async def login(self, request: web.Request) -> web.Response:
        """The login form's target: the admin token buys an HttpOnly cookie that lets this browser read status."""
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not self.admin.allows(token.strip()):
            log.warning("status page login refused from %s: wrong admin token", request.remote)
            return pages.login_page(401, "That is not the admin token. Try again.")
        response = see_other("/")
        self._set_cookie(response, request)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """Forget the login cookie on this browser."""
        response = see_other("/")
        response.del_cookie(_COOKIE, path="/")
        return response

    async def status_json(self, request: web.Request) -> web.Response:
        """Every fact the page shows, for `telemetry-hub status` and scripts (same token rule as the page)."""
        if not self.allowed(request):
            return token_refused(request)
        return json_response(200, await self.facts.facts(_here(request)), {"Cache-Control": "no-store"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus metrics (same token rule as the page; Prometheus sends it as a bearer token)."""
        if not self.allowed(request):
            return web.Response(
                status=401,
                text="missing or wrong admin token: send 'Authorization: Bearer <admin token>'\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        body, content_type = await self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
