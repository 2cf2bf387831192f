"""The hub's own checks on each event: what it needs to store and route it, nothing stricter."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec
import orjson

from ..schema import SchemaChecker
from .envelope import _HEAD
from .model import Checked, Event, Quarantined
from .rawjson import _DECODER, UNPARSED


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
    return _new(
        Event,
        (
            raw,
            head.mid,
            head.eid,
            head.ets,
            ctx.did or None,
            ctx.channel or None,
            pdata.id or None if pdata is not None else None,
        ),
    )


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
