"""The admin token: who may run admin actions (sync now, import, re-queue) over HTTP."""

from __future__ import annotations

import hmac

from aiohttp import web

__all__ = ["AdminGate", "token_from"]


def token_from(request: web.Request) -> str:
    """The token a request presents: `Authorization: Bearer`, `X-Admin-Token`, or `?token=`."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-Admin-Token", "") or request.query.get("token", "")


class AdminGate:
    """Constant-time check of the admin token; the token itself never appears in answers or logs."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def allows(self, presented: str) -> bool:
        """Whether the presented token is the admin token."""
        return bool(self._token) and hmac.compare_digest(self._token, presented.encode())

    def check(self, request: web.Request, presented: str | None = None) -> bool:
        """Whether this request carries the admin token (or the given one, e.g. from a form)."""
        return self.allows(presented if presented is not None else token_from(request))
