"""The Sunbird wire format: envelopes, the hub's own event checks, Sunbird-style answers."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Annotated, Any, NamedTuple

import msgspec
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
    "sqlite_text",
]

_WS = re.compile(r"[ \t\n\r]*")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class Event(NamedTuple):
    """One event that passed the hub's checks, with its bytes exactly as the device sent them.

    A NamedTuple, not a frozen dataclass: it is built once per event on the ingest hot path, and a
    frozen dataclass's __init__ costs several times more. Its strings are valid Unicode and `ets` is
    a float, so the store binds them as they are.
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


def _too_many(count: str, limit: int) -> BadRequest:
    # Checked while parsing, before any per-event work: a few KB of gzip can hold millions of tiny events.
    return BadRequest(f"{count} events in one request, over the limit of {limit} "
                      "(limits.max_events_per_request): send smaller batches", 413)


class _Pdata(msgspec.Struct, gc=False):
    id: str | None = None


class _Context(msgspec.Struct, gc=False):
    """The few context fields the store indexes; msgspec skips the rest without building objects."""

    did: str | None = None
    channel: str | None = None
    pdata: _Pdata | None = None


class _Head(msgspec.Struct, gc=False):
    """What the hub needs of every event, typed so that msgspec does the checks in C.

    An event that does not fit (a missing mid, a numeric did, ...) takes the full path, which
    words the reason or keeps the event as it is.
    """

    mid: str
    eid: str
    ets: float
    context: _Context | None = None


# An event whose object has not been built (the fast path); check_events reads what it needs from raw.
UNPARSED: Any = msgspec.UNSET
_HEAD = msgspec.json.Decoder(_Head)
_ENVELOPES: dict[int | None, msgspec.json.Decoder[Any]] = {}


def _envelope_decoder(max_events: int | None) -> msgspec.json.Decoder[Any]:
    dec = _ENVELOPES.get(max_events)
    if dec is None:
        events_type: Any = list[msgspec.Raw]
        if max_events is not None:
            # Past the limit msgspec refuses without keeping the extra events (a body of millions of
            # tiny events: memory stays flat); the slow path then words the 413.
            events_type = Annotated[list[msgspec.Raw], msgspec.Meta(max_length=max_events)]
        fields = [("events", events_type), ("params", Any, msgspec.UNSET)]
        dec = _ENVELOPES[max_events] = msgspec.json.Decoder(msgspec.defstruct("Envelope", fields))
    return dec


def _split_fast(body: bytes, max_events: int | None = None) -> tuple[dict[str, Any], list[tuple[Any, bytes]]] | None:
    """The envelope read by msgspec, each event's exact bytes kept, no event objects built; None if unsure.

    Anything msgspec refuses (bad JSON, too many events, odd shapes) goes the slow way, which
    explains the problem precisely; msgspec does not check UTF-8 inside strings it skips, so that
    is checked here.
    """
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        env = _envelope_decoder(max_events).decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    meta = {} if env.params is msgspec.UNSET else {"params": env.params}
    return meta, [(UNPARSED, bytes(raw)) for raw in env.events]


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


def sqlite_text(value: str | None) -> str | None:
    """A str SQLite can store: lone surrogates (valid JSON escapes, undecodable X-Device-Id bytes) become U+FFFD.

    sqlite3 raises UnicodeEncodeError on them, which would fail the whole group commit.
    """
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _str(value: Any) -> str | None:
    """A non-empty string field as SQLite can store it, else None."""
    return sqlite_text(value) if isinstance(value, str) and value else None


def _float(value: int | float) -> float:
    """ets as a float: integers beyond 64 bits are valid JSON, but sqlite3 cannot bind them."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _parse(raw: bytes) -> Any:
    """An event's full JSON (orjson; the stdlib for what orjson refuses, e.g. integers over 64 bits)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _DECODER.decode(raw.decode("utf-8"))


_new = tuple.__new__


def _fast_event(raw: bytes) -> Event | None:
    """The Event for a well-formed event read without building its object, or None (take the full path)."""
    try:
        head = _HEAD.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if not head.mid:
        return None
    ctx = head.context
    if ctx is None:
        return _new(Event, (raw, head.mid, head.eid, head.ets, None, None, None))
    pdata = ctx.pdata
    return _new(Event, (raw, head.mid, head.eid, head.ets, ctx.did or None, ctx.channel or None,
                        pdata.id or None if pdata is not None else None))


def check_events(
    items: Iterable[tuple[Any, bytes]],
    *,
    max_event_bytes: int,
    schema: SchemaChecker | None,
    strict: bool,
) -> Checked:
    """Sort a request's events into stored and quarantined, counting full-schema warnings.

    An item's object may be UNPARSED (the fast path): then only the fields the hub needs are read,
    and the whole object is built just for the events the schema check samples.
    """
    out = Checked()
    items = items if isinstance(items, list) else list(items)
    # Strict mode checks every event; otherwise warnings stay within a CPU budget, taken per request.
    sampled = 0 if schema is None else len(items) if strict else schema.take_budget(len(items))
    for index, (obj, raw) in enumerate(items):
        sample = index < sampled
        if obj is UNPARSED:
            event = None if sample or len(raw) > max_event_bytes else _fast_event(raw)
            if event is not None:
                if schema is not None:
                    out.unchecked += 1
                out.events.append(event)
                continue
            try:
                obj = _parse(raw)
            except (ValueError, RecursionError) as exc:  # e.g. a 50,000-digit number: JSON, but not readable here
                out.quarantined.append(Quarantined(index, f"event {index} cannot be read as JSON ({exc})", raw))
                continue
        reason = _problem(obj)
        mid = obj.get("mid") if isinstance(obj, dict) and isinstance(obj.get("mid"), str) else None
        if reason is None and len(raw) > max_event_bytes:
            reason = f"is {len(raw)} bytes, over the {max_event_bytes}-byte limit for one event"
        if reason is None and schema is not None:
            if not sample:
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
                eid=_str(obj["eid"]) or "",
                ets=_float(obj["ets"]),
                did=_str(ctx.get("did")),
                channel=_str(ctx.get("channel")),
                pdata_id=_str(pdata.get("id")) if isinstance(pdata, dict) else None,
            )
        )
    return out


_second: list[Any] = [None, ""]  # the last whole second formatted, reused: every answer carries a ts


def _now() -> tuple[str, int]:
    """(ISO 8601 UTC with milliseconds, epoch ms) for an answer's ts and ets."""
    ms = int(time.time() * 1000)
    sec, rest = divmod(ms, 1000)
    if _second[0] != sec:
        _second[:] = [sec, datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{rest:03d}Z", ms


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
