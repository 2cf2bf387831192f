"""Admin actions over HTTP: Sync now and the dead-letter queue (admin token required)."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from .admin import AdminGate
from .forward import Forwarder
from .ingest import json_response, sunbird_error
from .store import Store

__all__ = ["Control"]

log = logging.getLogger(__name__)


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
        ]

    def _denied(self, request: web.Request, form_token: str | None = None) -> web.Response | None:
        if self.admin.check(request, form_token):
            return None
        log.warning("admin action %s refused from %s: missing or wrong admin token", request.path, request.remote)
        return sunbird_error(401, "missing or wrong admin token: send 'Authorization: Bearer <admin token>' "
                                  "(the token is in <data_dir>/admin-token)")

    async def sync(self, request: web.Request) -> web.StreamResponse:
        """Deliver now and report the outcome; from the status page's button or `telemetry-hub sync`."""
        form = await request.post() if request.content_type.startswith(("multipart/", "application/x-www")) else {}
        token = form.get("token") if isinstance(form.get("token"), str) else None
        denied = self._denied(request, token)  # type: ignore[arg-type]
        if denied:
            if form and "text/html" in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther("/?synced=denied")  # the status page's form: say so on the page
            return denied
        timeout = float(request.query.get("timeout", "60"))
        result = await self.forwarder.sync_now(timeout=min(timeout, 300.0))
        log.info("sync now: delivered %d, %d waiting, %s", result["delivered"], result["backlog"],
                 result["error"] or "no error")
        if form and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther("/?" + ("synced=1" if result["ok"] else "synced=0"))
        return json_response(200, result)

    async def dead_letters(self, request: web.Request) -> web.Response:
        """List dead letters (events upstream refused) with upstream's reason."""
        denied = self._denied(request)
        if denied:
            return denied
        limit = min(int(request.query.get("limit", "100")), 10000)
        rows = await self.store.fetchall(
            "SELECT mid, eid, did, reason, failed_at FROM dead_letter ORDER BY id DESC LIMIT ?", (limit,))
        total = await self.store.scalar("SELECT count(*) FROM dead_letter")
        items = [{"mid": m, "eid": e, "did": d, "reason": r, "failed_at": f} for m, e, d, r, f in rows]
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
            n = await self.store.requeue_dead(mids)
        else:
            return sunbird_error(400, 'send {"all": true} or {"mids": ["..."]}')
        log.info("re-queued %d dead letters for upstream", n)
        return json_response(200, {"requeued": n})
