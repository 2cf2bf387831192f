"""Receipts for devices: "which of the events I sent are safe here, and which are upstream?"

`POST /api/data/v1/telemetry/receipts` with `{"mids": [...]}` and the same device key as ingest; the
answer is the Sunbird envelope with every asked mid in one of delivered, waiting, quarantined,
dead_letter or unknown. Read-only: it never changes what the hub keeps.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import orjson
from aiohttp import web

from ..config import LimitsConfig
from ..errors import StoreClosed
from ..store import Receipt, Store
from ..telemetry import success_body
from .device import RECEIPTS_PATH, KeyRing
from .responses import json_response, sunbird_error

__all__ = ["RECEIPTS_PATH", "Receipts", "receipt_result"]

log = logging.getLogger(__name__)

# A mid is a uuid (36 characters) in every Sunbird client; longer ones are allowed, not unbounded ones.
_MAX_MID_CHARS = 256


def receipt_result(r: Receipt) -> dict[str, Any]:
    """The answer's `result`: each asked mid in exactly one list."""
    return {
        "delivered": r.delivered,
        "waiting": r.waiting,
        "quarantined": [{"mid": m, "reason": why} for m, why in r.quarantined],
        "dead_letter": [{"mid": m, "reason": why} for m, why in r.dead_letter],
        "unknown": r.unknown,
    }


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Receipts:
    """The receipts path; authenticated by the device keys (KeyRing), bounded by the ingest limits."""

    def __init__(self, store: Store, limits: LimitsConfig, keys: KeyRing) -> None:
        self.store = store
        self.limits = limits
        self.keys = keys
        self.requests = 0

    def routes(self) -> list[web.RouteDef]:
        """The receipts path, for the composition root to mount."""
        return [web.post(RECEIPTS_PATH, self.handle), web.options(RECEIPTS_PATH, self.preflight)]

    async def preflight(self, request: web.Request) -> web.Response:
        """A CORS preflight (the device API's CORS middleware adds the headers)."""
        return web.Response(status=204)

    async def handle(self, request: web.Request) -> web.Response:
        """Look every asked mid up; 200 with the receipt, else a Sunbird error that says what to change."""
        self.requests += 1
        if not self.keys.allows(request.headers.get("Authorization")):
            return sunbird_error(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>' with a key this hub knows"
            )
        msgid: Any = None
        try:
            doc = await self._read(request)
            params = doc.get("params")
            msgid = params.get("msgid") if isinstance(params, dict) else None
            mids = self._mids(doc)
        except _Refused as exc:
            return sunbird_error(exc.status, str(exc), msgid)
        try:
            receipt = await self.store.read.receipts(mids)
        except StoreClosed as exc:
            return sunbird_error(503, str(exc), msgid, {"Retry-After": "5"})
        return json_response(200, success_body(msgid, receipt_result(receipt)))

    async def _read(self, request: web.Request) -> dict[str, Any]:
        body = await request.read()  # the server read it already, within server.client_timeout
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, self.limits.max_decompressed_bytes + 1)
            except zlib.error:
                raise _Refused(400, "body is not valid gzip; send Content-Encoding: gzip only with gzip data") from None
            if len(body) > self.limits.max_decompressed_bytes:
                raise _Refused(413, "body is too large once decompressed (limits.max_decompressed_bytes)")
        elif encoding not in ("", "identity"):
            raise _Refused(415, f"Content-Encoding {encoding!r} is not supported: send gzip or plain JSON")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Refused(400, 'body is not JSON: send {"mids": ["<mid>", ...]}') from None
        if not isinstance(doc, dict):
            raise _Refused(400, 'body must be a JSON object: {"mids": ["<mid>", ...]}')
        return doc

    def _mids(self, doc: dict[str, Any]) -> list[str]:
        mids = doc.get("mids")
        if not isinstance(mids, list) or not mids:
            raise _Refused(400, "'mids' is missing or empty: send the mids of the events to ask about, as a list")
        limit = self.limits.max_events_per_request
        if len(mids) > limit:
            raise _Refused(
                413,
                f"{len(mids)} mids asked, at most {limit} per request (limits.max_events_per_request): ask in parts",
            )
        bad = next((i for i, m in enumerate(mids) if not isinstance(m, str) or not m or len(m) > _MAX_MID_CHARS), None)
        if bad is not None:
            raise _Refused(400, f"mids[{bad}] is not a mid: every mid must be a non-empty string")
        return mids
