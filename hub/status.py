"""Health for machines, and (later) the status page and metrics for branch IT."""

from __future__ import annotations

import logging

from aiohttp import web

from .admin import AdminGate
from .config import Config
from .forward import Forwarder
from .ingest import Ingest, json_response
from .store import Store

__all__ = ["Status"]

log = logging.getLogger(__name__)

# Health reports "full" once a typical request would no longer fit.
_HEALTH_MARGIN_BYTES = 32 * 1024


class Status:
    """Answers 'is the hub healthy, and why not' from the store's live figures."""

    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        forwarder: Forwarder,
        admin: AdminGate,
        cfg: Config,
        *,
        version: str,
        hub_id: str,
    ) -> None:
        self.store = store
        self.ingest = ingest
        self.forwarder = forwarder
        self.admin = admin
        self.cfg = cfg
        self.version = version
        self.hub_id = hub_id

    def routes(self) -> list[web.RouteDef]:
        """The status paths, for the composition root to mount."""
        return [web.get("/health", self.health)]

    async def health(self, request: web.Request) -> web.Response:
        """Machine-readable health: 200 when the store takes writes, 503 with the reason when not."""
        writable = await self.store.writable()
        s = self.store.stats
        problems = []
        if not writable:
            problems.append("the store does not accept writes")
        space = self.store.space_problem(_HEALTH_MARGIN_BYTES)
        if space:
            problems.append(space)
        body = {
            "healthy": not problems,
            "problems": problems,
            "version": self.version,
            "hub": self.hub_id,
            "store_writable": writable,
            "backlog": s.backlog,
            "stored_total": s.stored_total,
            "quarantined": s.quarantined,
            "duplicates": s.duplicates,
            "db_bytes": s.db_bytes,
            "free_bytes": s.free_bytes,
        }
        return json_response(200 if not problems else 503, body)
