"""What branch IT sees over HTTP: /health for machines, the status page at /, /status.json, /metrics."""

from __future__ import annotations

import logging

from aiohttp import web

from ..facts import Here, StatusFacts, page_needs_token
from ..metrics import Metrics
from ..signin import Session
from . import pages
from .admin import COOKIE, AdminGate, token_from, token_refused
from .responses import json_response, see_other

__all__ = ["StatusPages"]

log = logging.getLogger(__name__)

_BOOKMARK = (
    "Links with ?token= no longer sign you in: the token would end up in the browser's history and in logs. "
    "Type the token (or a sign-in code) once below; this browser then stays signed in."
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

    def __init__(
        self,
        facts: StatusFacts,
        metrics: Metrics,
        admin: AdminGate,
        *,
        token_place: str = "",
        secure_cookies: bool = False,
    ) -> None:
        """`token_place` says where this hub's admin token is (the login page shows it); `secure_cookies`
        (TLS on) marks the session cookie Secure even if some path let a login through over plain HTTP."""
        self.facts = facts
        self.metrics = metrics
        self.admin = admin
        self.needs_token = page_needs_token(facts.cfg)
        self.token_place = token_place or "the file admin-token in the hub's data directory"
        self.secure_cookies = secure_cookies

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

    def _session(self, request: web.Request) -> Session | None:
        return self.admin.session(request)

    def allowed(self, request: web.Request) -> bool:
        """Whether this request may read status: no token needed, or the token, or a live session."""
        return not self.needs_token or self._presented_token_ok(request) or self._session(request) is not None

    def _login_page(self, status: int, error: str | None) -> web.Response:
        return pages.login_page(status, error, token_place=self.token_place, code_minutes=self.admin.codes.seconds / 60)

    # ---- handlers --------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """Machine-readable health: 200 when the store takes writes, 503 with the reason when not."""
        healthy, body = await self.facts.health()
        return json_response(200 if healthy else 503, body)

    async def page(self, request: web.Request) -> web.Response:
        """The status page for a phone or laptop browser (HTML, no external assets, no script needed)."""
        if not self.allowed(request):
            # A bookmark from before: say why the link no longer signs in, rather than fail silently.
            return self._login_page(401, _BOOKMARK if "token" in request.query else None)
        facts = await self.facts.facts(_here(request))
        synced = request.query.get("synced")
        session = self._session(request)
        return pages.status_page(
            facts,
            synced=synced if synced in ("0", "1", "denied") else None,
            can_import=_has_route(request, "/import"),
            logged_in=session is not None,
            csrf=session.csrf if session is not None else "",
        )

    async def login(self, request: web.Request) -> web.Response:
        """The login form's target: the admin token, or a sign-in code, starts a new session for this browser."""
        form = await request.post()
        typed = form.get("token")
        typed = typed.strip() if isinstance(typed, str) else ""
        how = (
            "admin token"
            if typed and self.admin.allows(typed)
            else "sign-in code"
            if self.admin.codes.use(typed)
            else ""
        )
        if not how:
            log.warning(
                "status page login refused from %s: not the admin token nor a live sign-in code", request.remote
            )
            return self._login_page(
                401, "That is neither the admin token nor a sign-in code that still works. Try again."
            )
        sid, session = self.admin.sessions.create()
        log.info("status page: signed in from %s with the %s", request.remote, how)
        response = see_other("/")
        response.set_cookie(
            COOKIE,
            sid,
            max_age=max(1, int(session.expires_at - session.created_at)),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=(request.secure or self.secure_cookies) or None,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """End this browser's session on the hub (the cookie no longer works anywhere) and forget the cookie."""
        if self.admin.sessions.revoke(request.cookies.get(COOKIE, "")):
            log.info("status page: signed out from %s", request.remote)
        response = see_other("/")
        response.del_cookie(COOKIE, path="/")
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
