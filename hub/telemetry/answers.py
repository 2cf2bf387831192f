"""Sunbird-style answers: the success and error envelopes devices and upstream clients read."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

_second: list[Any] = [None, ""]  # the last whole second formatted, reused: every answer carries a ts


def _now() -> tuple[str, int]:
    """(ISO 8601 UTC with milliseconds, epoch ms) for an answer's ts and ets."""
    ms = int(time.time() * 1000)
    sec, rest = divmod(ms, 1000)
    if _second[0] != sec:
        _second[:] = [sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{rest:03d}Z", ms


def _envelope(
    msgid: Any, status: str, err: str | None, errmsg: str | None, code: str, result: dict[str, Any], ets: bool = True
) -> dict[str, Any]:
    """The standard Sunbird API envelope, plus `ets` (epoch ms) that the mobile app reads (unless `ets` is False)."""
    ts, now_ms = _now()
    body = {
        "id": "api.telemetry",
        "ver": "1.0",
        "ts": ts,
        "ets": now_ms,
        "params": {
            "resmsgid": str(uuid.uuid4()),
            "msgid": msgid if isinstance(msgid, str) else None,
            "status": status,
            "err": err,
            "errmsg": errmsg,
        },
        "responseCode": code,
        "result": result,
    }
    if not ets:
        del body["ets"]
    return body


def success_body(msgid: Any, result: dict[str, Any], *, ets: bool = True) -> dict[str, Any]:
    """The Sunbird success envelope, with `ets` so the mobile app can correct its clock.

    `ets=False` while the hub's clock is not known to be good (hub.clock): the app then keeps its own.
    """
    return _envelope(msgid, "successful", None, None, "SUCCESS", result, ets)


_ERR = {
    400: ("ERR_BAD_REQUEST", "CLIENT_ERROR"),
    401: ("UNAUTHORIZED", "CLIENT_ERROR"),
    403: ("FORBIDDEN", "CLIENT_ERROR"),
    404: ("ERR_DATA_NOT_FOUND", "RESOURCE_NOT_FOUND"),
    405: ("ERR_METHOD_NOT_ALLOWED", "CLIENT_ERROR"),
    408: ("ERR_REQUEST_TIMEOUT", "CLIENT_ERROR"),
    413: ("ERR_REQUEST_TOO_LARGE", "CLIENT_ERROR"),
    415: ("ERR_UNSUPPORTED_MEDIA_TYPE", "CLIENT_ERROR"),
    503: ("ERR_SERVICE_UNAVAILABLE", "SERVICE_UNAVAILABLE"),
    507: ("LOW_DISK_SPACE", "SERVICE_UNAVAILABLE"),
}


def error_body(status: int, errmsg: str, msgid: Any = None) -> dict[str, Any]:
    """The Sunbird error envelope; `errmsg` says what is wrong in words branch IT can act on."""
    err, code = _ERR.get(status, ("ERR_INTERNAL_SERVER_ERROR", "INTERNAL_SERVER_ERROR"))
    return _envelope(msgid, "failed", err, errmsg, code, {})


def _message_of(doc: Any) -> str | None:
    """The words in a Sunbird (or gateway) error answer: params.errmsg, else params.err, else message/error."""
    if not isinstance(doc, dict):
        return None
    params = doc.get("params")
    if isinstance(params, dict):
        for key in ("errmsg", "err"):
            value = params.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    for key in ("errmsg", "message", "error"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def refusal_words(reason: str) -> str:
    """A dead letter's stored reason in words: "upstream answered 400: <its errmsg>", not its raw JSON.

    The stored reason keeps upstream's answer as it came (shown whole by `dead-letter list --json`);
    this finds the JSON in it and keeps only the message a person reads.
    """
    start = reason.find("{")
    if start < 0:
        return reason
    try:
        doc = orjson.loads(reason[start:])
    except orjson.JSONDecodeError:
        return reason
    message = _message_of(doc)
    if message is None:
        return reason
    head = reason[:start].rstrip()
    return f"{head} {message}" if head else message
