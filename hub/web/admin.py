"""Admin actions over HTTP (Sync now, the dead-letter queue) and the admin token check they all use."""

from __future__ import annotations

import hmac
import logging

import orjson
from aiohttp import web

from ..forward import Forwarder
from ..signin import LoginCodes, Session, SessionBook
from ..store import Store
from ..telemetry import refusal_words
from .responses import json_response, sunbird_error

__all__ = [
    "COOKIE",
    "TOKEN_IN_URL",
    "AdminGate",
    "BadParameter",
    "Control",
    "query_number",
    "token_from",
    "token_refused",
]

log = logging.getLogger(__name__)

COOKIE = "hub_status"  # the status page's session cookie: a random id naming a server-side session


# A token in a URL ends up in browser history, proxies' logs and screenshots: it is never accepted there.
TOKEN_IN_URL = (
    "the admin token is no longer accepted in the address (?token=...): it would end up in browser history "
    "and logs. Send it as 'Authorization: Bearer <token>', or sign in on the status page"
)


def token_refused(request: web.Request) -> web.Response:
    """The 401 every admin path answers without the token: what to send, or why a token in the URL is refused."""
    if "token" in request.query:
        return sunbird_error(401, TOKEN_IN_URL)
    return sunbird_error(
        401,
        "missing or wrong admin token: send 'Authorization: Bearer <admin token>' "
        "(the token is in <data_dir>/admin-token)",
    )


def token_from(request: web.Request) -> str:
    """The token a request presents: `Authorization: Bearer` or `X-Admin-Token` (never the query string)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-Admin-Token", "")


class BadParameter(Exception):
    """An admin parameter out of its range; the message names it and the range (answered as a 400)."""


def query_number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    """A numeric query parameter within [low, high]; BadParameter names it and its range otherwise."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also refuses nan and inf
        raise BadParameter(f"{name} must be a number from {low:g} to {high:g}, not {text[:40]!r}")
    return value


def same_origin(request: web.Request) -> bool:
    """Whether a browser's form post came from this hub's own pages: no Origin (an old browser; the CSRF token
    still has to match), or an Origin naming exactly the scheme and host this request was sent to."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.lower() == f"{'https' if request.secure else 'http'}://{request.host}".lower()


class AdminGate:
    """Who may act: the admin token (constant-time; never in answers or logs), or a signed-in browser's
    session with its CSRF token from the hub's own page (a cookie alone never suffices)."""

    def __init__(self, token: str, sessions: SessionBook | None = None, codes: LoginCodes | None = None) -> None:
        self._token = token.encode()
        self.sessions = sessions if sessions is not None else SessionBook(None, token, 1.0)
        self.codes = codes if codes is not None else LoginCodes(600.0)

    def session(self, request: web.Request) -> Session | None:
        """The live session this request's cookie names, if any."""
        return self.sessions.find(request.cookies.get(COOKIE, ""))

    def form_allows(self, request: web.Request, csrf: object) -> bool:
        """A browser's form post by session: a live session, its CSRF token in the form, and our own Origin."""
        session = self.session(request)
        if session is None or not isinstance(csrf, str) or not csrf:
            return False
        if not hmac.compare_digest(session.csrf.encode(), csrf.encode()):
            log.warning(
                "form post to %s refused from %s: its CSRF token is not this session's", request.path, request.remote
            )
            return False
        if not same_origin(request):
            log.warning(
                "form post to %s refused from %s: sent from another site (Origin %s)",
                request.path,
                request.remote,
                request.headers.get("Origin", "")[:100],
            )
            return False
        return True

    def allows(self, presented: str) -> bool:
        """Whether the presented token is the admin token."""
        return bool(self._token) and hmac.compare_digest(self._token, presented.encode())

    def check(self, request: web.Request, presented: str | None = None) -> bool:
        """Whether this request carries the admin token (or the given one, e.g. from a form)."""
        return self.allows(presented if presented is not None else token_from(request))


class Control:
    """The hub's admin endpoints; each checks the admin token first."""

    def __init__(self, store: Store, forwarder: Forwarder, admin: AdminGate) -> None:
        self.store = store
        self.forwarder = forwarder
        self.admin = admin

    def routes(self) -> list[web.RouteDef]:
        """The admin paths, for the composition root to mount."""
        return [
            web.post("/admin/sync", self.sync),
            web.get("/admin/dead-letters", self.dead_letters),
            web.post("/admin/dead-letters/requeue", self.requeue),
            web.post("/admin/login-code", self.login_code),
        ]

    def _denied(self, request: web.Request, form_token: str | None = None) -> web.Response | None:
        if self.admin.check(request, form_token):
            return None
        log.warning("admin action %s refused from %s: missing or wrong admin token", request.path, request.remote)
        return token_refused(request)

    async def sync(self, request: web.Request) -> web.StreamResponse:
        """Deliver now and report the outcome; from the status page's button or `telemetry-hub sync`."""
        form = await request.post() if request.content_type.startswith(("multipart/", "application/x-www")) else {}
        token = form.get("token") if isinstance(form.get("token"), str) else None
        by_session = bool(form) and self.admin.form_allows(request, form.get("csrf"))
        denied = None if by_session else self._denied(request, token)  # type: ignore[arg-type]  # str or None
        if denied:
            if form and "text/html" in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther("/?synced=denied")  # the status page's form: say so on the page
            return denied
        try:
            timeout = query_number(request, "timeout", 60.0, 0.0, 300.0)
        except BadParameter as exc:
            return sunbird_error(400, str(exc))
        result = await self.forwarder.sync_now(timeout=timeout)
        log.info(
            "sync now: delivered %d, %d waiting, %s",
            result["delivered"],
            result["backlog"],
            result["error"] or "no error",
        )
        if form and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther("/?" + ("synced=1" if result["ok"] else "synced=0"))
        return json_response(200, result)

    async def dead_letters(self, request: web.Request) -> web.Response:
        """List dead letters (events upstream refused) with upstream's reason."""
        denied = self._denied(request)
        if denied:
            return denied
        try:
            limit = int(query_number(request, "limit", 100, 1, 10_000))
        except BadParameter as exc:
            return sunbird_error(400, str(exc))
        rows = await self.store.read.dead_letters(limit)
        total = await self.store.read.dead_letter_count()
        items = [
            {
                "mid": d.mid,
                "eid": d.eid,
                "did": d.did,
                "reason": refusal_words(d.reason),
                "raw_reason": d.reason,
                "failed_at": d.failed_at,
            }
            for d in rows
        ]
        return json_response(200, {"total": total, "items": items})

    async def requeue(self, request: web.Request) -> web.Response:
        """Put dead letters back in the upstream queue: `{"all": true}` or `{"mids": [...]}`."""
        denied = self._denied(request)
        if denied:
            return denied
        try:
            doc = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return sunbird_error(400, 'send {"all": true} or {"mids": ["..."]}')
        mids = doc.get("mids") if isinstance(doc, dict) else None
        if isinstance(doc, dict) and doc.get("all") is True:
            n = await self.store.requeue_dead(None)
        elif isinstance(mids, list) and mids and all(isinstance(m, str) for m in mids):
            known = await self.store.read.dead_letter_mids(mids)
            n = await self.store.requeue_dead(mids)
            missing = sorted(set(mids) - known)
        else:
            return sunbird_error(400, 'send {"all": true} or {"mids": ["..."]}')
        log.info("re-queued %d dead letters for upstream", n)
        return json_response(200, {"requeued": n} if doc.get("all") is True else {"requeued": n, "missing": missing})

    async def login_code(self, request: web.Request) -> web.Response:
        """A new short sign-in code for a phone (`telemetry-hub login-code`); the admin token itself is needed."""
        denied = self._denied(request)
        if denied:
            return denied
        code, expires_at = self.admin.codes.mint()
        log.info("a sign-in code was made for a phone (valid %g s, once)", self.admin.codes.seconds)
        return json_response(
            200,
            {"code": code, "expires_at": expires_at, "valid_s": self.admin.codes.seconds},
            {"Cache-Control": "no-store"},
        )
