"""The answers every handler shares: JSON, Sunbird-style errors, and cutting off a stalled body."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..telemetry import error_body

__all__ = ["answer_and_close", "json_response", "see_other", "sunbird_error"]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer; always a full body (the JS library counts an empty 200 as a failure)."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send an answer to a body that stopped arriving, then close the connection at once.

    Returned normally, aiohttp would go on reading the rest of the body (up to 10 s) first.
    """
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def sunbird_error(
    status: int, message: str, msgid: object = None, headers: dict[str, str] | None = None
) -> web.Response:
    """A Sunbird-style error answer whose errmsg says what is wrong."""
    return json_response(status, error_body(status, message, msgid), headers)


def see_other(location: str) -> web.Response:
    """303 to another page (after a form post), never cached."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
