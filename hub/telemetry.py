"""The Sunbird wire format: envelopes, the hub's own event checks, Sunbird-style answers."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, NamedTuple

import orjson

from .errors import BadRequest
from .schema import SchemaChecker

__all__ = [
    "Event",
    "Quarantined",
    "Checked",
    "split_envelope",
    "split_array",
    "check_events",
    "success_body",
    "error_body",
]

_WS = re.compile(r"[ \t\n\r]*")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class Event(NamedTuple):
    """One event that passed the hub's checks, with its bytes exactly as the device sent them.

    A NamedTuple, not a frozen dataclass: it is built once per event on the ingest hot path, and a
    frozen dataclass's __init__ costs several times more.
    """

    raw: bytes
    mid: str
    eid: str
    ets: float
    did: str | None
    channel: str | None
    pdata_id: str | None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An event the hub keeps aside (never forwarded), with the reason in words."""

    index: int
    reason: str
    raw: bytes
    mid: str | None = None


@dataclass
class Checked:
    """The outcome of checking one request's events."""

    events: list[Event] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    unchecked: int = 0  # events not schema-checked because the warning budget was spent


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line} column {col}"


def _value(text: str, i: int) -> tuple[Any, int]:
    """Decode one JSON value at i, turning every decoder failure into a BadRequest."""
    try:
        return _DECODER.raw_decode(text, i)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc.msg} at {_where(text, exc.pos)}") from None
    except RecursionError:
        raise BadRequest(f"body is not acceptable JSON: nested too deeply near {_where(text, i)}") from None
    except ValueError as exc:  # NaN/Infinity, integers with too many digits
        raise BadRequest(f"body is not acceptable JSON near {_where(text, i)}: {exc}") from None


def _expect(text: str, i: int, chars: str, what: str) -> int:
    i = _WS.match(text, i).end()  # type: ignore[union-attr]
    if i >= len(text) or text[i] not in chars:
        got = "end of body" if i >= len(text) else repr(text[i])
        raise BadRequest(f"body is not valid JSON: expected {what} at {_where(text, i)}, found {got}")
    return i


def _array_items(text: str, i: int, max_items: int | None = None) -> tuple[list[tuple[Any, str]], int]:
    """Decode the array starting at text[i] == '[', keeping each element's original text."""
    items: list[tuple[Any, str]] = []
    i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", i):
        return items, i + 1
    while True:
        obj, end = _value(text, i)
        items.append((obj, text[i:end]))
        if max_items is not None and len(items) > max_items:
            raise _too_many(f"over {max_items}", max_items)
        i = _expect(text, end, ",]", "',' or ']'")
        if text[i] == "]":
            return items, i + 1
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (bad byte at offset {exc.start})") from None


_WSB = re.compile(rb"[ \t\n\r]*")


def _too_many(count: str, limit: int) -> BadRequest:
    # Checked while parsing, before any per-event work: a few KB of gzip can hold millions of tiny events.
    return BadRequest(f"{count} events in one request, over the limit of {limit} "
                      "(limits.max_events_per_request): send smaller batches", 413)


def _split_fast(body: bytes, max_events: int | None = None) -> tuple[dict[str, Any], list[tuple[Any, bytes]]] | None:
    """Compact JSON parsed by orjson, or None (see _spans); raises only BadRequest (too many events)."""
    try:
        return _spans(body, max_events)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError):
        return None


def _spans(body: bytes, max_events: int | None = None) -> tuple[dict[str, Any], list[tuple[Any, bytes]]] | None:
    """Compact JSON (what JSON.stringify writes) parsed by orjson; None when spans cannot be proven.

    Each value is re-serialised and compared with the body at its position, so a span is only
    taken when the bytes match exactly; anything else (spaces, escapes, 1e3) goes the slow way.
    """
    doc = orjson.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        return None
    if max_events is not None and len(doc["events"]) > max_events:
        raise _too_many(str(len(doc["events"])), max_events)
    ws = _WSB.match
    dumps = orjson.dumps
    pos = ws(body, 0).end()
    if body[pos:pos + 1] != b"{":
        return None
    pos += 1
    items: list[tuple[Any, bytes]] = []
    for n, (key, value) in enumerate(doc.items()):
        pos = ws(body, pos).end()
        if n:
            if body[pos:pos + 1] != b",":
                return None
            pos = ws(body, pos + 1).end()
        k = dumps(key)
        if not body.startswith(k, pos):
            return None
        pos = ws(body, pos + len(k)).end()
        if body[pos:pos + 1] != b":":
            return None
        pos = ws(body, pos + 1).end()
        if key != "events":
            v = dumps(value)
            if not body.startswith(v, pos):
                return None
            pos += len(v)
            continue
        if body[pos:pos + 1] != b"[":
            return None
        pos += 1
        for i, event in enumerate(value):
            pos = ws(body, pos).end()
            if i:
                if body[pos:pos + 1] != b",":
                    return None
                pos = ws(body, pos + 1).end()
            v = dumps(event)
            if not body.startswith(v, pos):
                return None
            items.append((event, v))
            pos += len(v)
        pos = ws(body, pos).end()
        if body[pos:pos + 1] != b"]":
            return None
        pos += 1
    pos = ws(body, pos).end()
    if body[pos:pos + 1] != b"}" or ws(body, pos + 1).end() != len(body):
        return None
    del doc["events"]
    return doc, items


def split_envelope(body: bytes, max_events: int | None = None) -> tuple[dict[str, Any], list[tuple[Any, bytes]]]:
    """Parse a request envelope; return its other fields and each event with its original bytes.

    More than `max_events` events raise BadRequest 413 before any per-event work is done.
    """
    fast = _split_fast(body, max_events)
    if fast is not None:
        return fast
    text = _decode_text(body)
    i = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if i >= len(text):
        raise BadRequest("body is empty: send a JSON object with an 'events' array")
    if text[i] != "{":
        raise BadRequest("body is not a JSON object: send {\"events\": [...]} as Sunbird clients do")
    meta: dict[str, Any] = {}
    items: list[tuple[Any, str]] | None = None
    i = _expect(text, i + 1, '"}', "a key or '}'")
    if text[i] == '"':
        while True:
            try:
                key, i = scanstring(text, i + 1)
            except json.JSONDecodeError as exc:
                raise BadRequest(f"body is not valid JSON: {exc.msg} at {_where(text, exc.pos)}") from None
            i = _expect(text, i, ":", "':'")
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            if key == "events" and text.startswith("[", i):
                items, i = _array_items(text, i, max_events)
                meta.pop("events", None)
            else:
                meta[key], i = _value(text, i)
                if key == "events":
                    items = None
            i = _expect(text, i, ",}", "',' or '}'")
            if text[i] == "}":
                break
            i = _expect(text, i + 1, '"', "a key")
    end = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
    if end != len(text):
        raise BadRequest(f"body is not valid JSON: extra data after the object at {_where(text, end)}")
    if items is None:
        if "events" in meta:
            raise BadRequest("'events' must be an array of telemetry events")
        raise BadRequest("body has no 'events' array: send {\"events\": [...]} as Sunbird clients do")
    return meta, [(obj, raw.encode("utf-8")) for obj, raw in items]


def split_array(text: str) -> list[tuple[Any, bytes]]:
    """Parse a bare JSON array of events, keeping each element's original bytes."""
    i = _expect(text, 0, "[", "'['")
    items, i = _array_items(text, i)
    if _WS.match(text, i).end() != len(text):  # type: ignore[union-attr]
        raise BadRequest("extra data after the array")
    return [(obj, raw.encode("utf-8")) for obj, raw in items]


def _problem(obj: Any) -> str | None:
    """Why the hub itself cannot handle this event, or None when it can."""
    if not isinstance(obj, dict):
        return f"is a JSON {type(obj).__name__ if not isinstance(obj, list) else 'array'}, not an object"
    mid = obj.get("mid")
    if not isinstance(mid, str) or not mid:
        return "has no 'mid' string" if mid is None else "'mid' must be a non-empty string"
    if not mid.isascii():
        try:
            mid.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape: two such mids could not be told apart when stored
            return "'mid' holds invalid Unicode (a lone \\uD800-\\uDFFF escape)"
    if not isinstance(obj.get("eid"), str):
        return "has no 'eid' string" if "eid" not in obj else "'eid' must be a string"
    ets = obj.get("ets")
    if isinstance(ets, bool) or not isinstance(ets, (int, float)):
        return "has no numeric 'ets'" if "ets" not in obj else "'ets' must be a number (epoch milliseconds)"
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def check_events(
    items: Iterable[tuple[Any, bytes]],
    *,
    max_event_bytes: int,
    schema: SchemaChecker | None,
    strict: bool,
) -> Checked:
    """Sort a request's events into stored and quarantined, counting full-schema warnings."""
    out = Checked()
    for index, (obj, raw) in enumerate(items):
        reason = _problem(obj)
        mid = obj.get("mid") if isinstance(obj, dict) and isinstance(obj.get("mid"), str) else None
        if reason is None and len(raw) > max_event_bytes:
            reason = f"is {len(raw)} bytes, over the {max_event_bytes}-byte limit for one event"
        if reason is None and schema is not None:
            # Strict mode checks every event; otherwise warnings stay within a CPU budget.
            if not strict and not schema.take_budget():
                out.unchecked += 1
                violation = None
            else:
                violation = schema.violation(obj)
            if violation is not None:
                if strict:
                    reason = f"breaks the Sunbird v3 schema: {violation}"
                else:
                    out.warnings[violation] = out.warnings.get(violation, 0) + 1
        if reason is not None:
            out.quarantined.append(Quarantined(index, f"event {index} {reason}", raw, mid))
            continue
        ctx = obj.get("context")
        ctx = ctx if isinstance(ctx, dict) else {}
        pdata = ctx.get("pdata")
        out.events.append(
            Event(
                raw=raw,
                mid=obj["mid"],
                eid=obj["eid"],
                ets=obj["ets"],
                did=_str(ctx.get("did")),
                channel=_str(ctx.get("channel")),
                pdata_id=_str(pdata.get("id")) if isinstance(pdata, dict) else None,
            )
        )
    return out


def _now() -> tuple[str, int]:
    now = time.time()
    iso = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return iso, int(now * 1000)


def _envelope(msgid: Any, status: str, err: str | None, errmsg: str | None, code: str,
              result: dict[str, Any]) -> dict[str, Any]:
    """The standard Sunbird API envelope, plus `ets` (epoch ms) that the mobile app reads."""
    ts, ets = _now()
    return {
        "id": "api.telemetry",
        "ver": "1.0",
        "ts": ts,
        "ets": ets,
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


def success_body(msgid: Any, result: dict[str, Any]) -> dict[str, Any]:
    """The Sunbird success envelope, with `ets` so the mobile app can correct its clock."""
    return _envelope(msgid, "successful", None, None, "SUCCESS", result)


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
