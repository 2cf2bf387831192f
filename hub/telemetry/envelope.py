"""Device request bodies and upstream batches: the Sunbird envelope split (fast path first) and built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import orjson

from ..errors import BadRequest
from .rawjson import UNPARSED, RawSplitter, SplitError, _where


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (bad byte at offset {exc.start})") from None


def _too_many(count: str, limit: int) -> BadRequest:
    # Checked while parsing, before any per-event work: a few KB of gzip can hold millions of tiny events.
    return BadRequest(
        f"{count} events in one request, over the limit of {limit} "
        "(limits.max_events_per_request): send smaller batches",
        413,
    )


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
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("events", events_type), ("params", Any, msgspec.UNSET)]
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


_DEVICE_EXPECTED = {'"}': "a key or '}'", '"': "a key", ":": "':'", ",}": "',' or '}'", ",]": "',' or ']'", "[": "'['"}


def _bad_request(exc: SplitError) -> BadRequest:
    """A splitter error in the device API's words."""
    where = f"line {exc.lineno} column {exc.colno}"
    if exc.code == "syntax":
        return BadRequest(f"body is not valid JSON: {exc.detail} at {where}")
    if exc.code == "expected":
        got = "end of body" if exc.pos >= len(exc.doc) else repr(exc.doc[exc.pos])
        return BadRequest(f"body is not valid JSON: expected {_DEVICE_EXPECTED[exc.detail]} at {where}, found {got}")
    if exc.code == "deep":
        return BadRequest(f"body is not acceptable JSON: nested too deeply near {where}")
    if exc.code == "constant":
        return BadRequest(f"body is not acceptable JSON near {where}: {exc.detail} is not valid JSON")
    if exc.code == "value":
        return BadRequest(f"body is not acceptable JSON near {where}: {exc.detail}")
    if exc.code == "too-many" and exc.limit is not None:
        return _too_many(f"over {exc.limit}", exc.limit)
    return BadRequest(f"body is not valid JSON: {exc.msg} at {where}")


def split_envelope(body: bytes, max_events: int | None = None) -> tuple[dict[str, Any], list[tuple[Any, bytes]]]:
    """Parse a request envelope; return its other fields and each event with its original bytes.

    More than `max_events` events raise BadRequest 413 before any per-event work is done.
    """
    fast = _split_fast(body, max_events)
    if fast is not None:
        return fast
    text = _decode_text(body)
    scan = RawSplitter(text, max_events)
    i = scan.ws(0)
    if i >= len(text):
        raise BadRequest("body is empty: send a JSON object with an 'events' array")
    if text[i] != "{":
        raise BadRequest('body is not a JSON object: send {"events": [...]} as Sunbird clients do')
    try:
        fields, items, end = scan.object(i)
    except SplitError as exc:
        raise _bad_request(exc) from None
    end = scan.ws(end)
    if end != len(text):
        raise BadRequest(f"body is not valid JSON: extra data after the object at {_where(text, end)}")
    events = fields.pop("events", None)
    if events is None:
        raise BadRequest("body has no 'events' array: send {\"events\": [...]} as Sunbird clients do")
    if items is None or not text.startswith("[", events[1]):  # the last 'events' key wins, as in msgspec
        raise BadRequest("'events' must be an array of telemetry events")
    return {key: obj for key, (obj, _, _) in fields.items()}, items.pairs()


def split_array(text: str) -> list[tuple[Any, bytes]]:
    """Parse a bare JSON array of events, keeping each element's original bytes."""
    scan = RawSplitter(text)
    try:
        items, i = scan.array(scan.expect(0, "["))
    except SplitError as exc:
        raise _bad_request(exc) from None
    if scan.ws(i) != len(text):
        raise BadRequest("extra data after the array")
    return items.pairs()


def batch_envelope(events: Sequence[bytes], msgid: str, device_id: str, ts: str) -> bytes:
    """The mobile app's batch envelope around events' original bytes (never re-serialised).

    One builder for every batch the hub writes: upstream requests and Share Telemetry archives.
    `params.msgid` and `mid` are the batch's fixed id, which upstream dedups by.
    """
    head = orjson.dumps(
        {
            "id": "ekstep.telemetry",
            "ver": "1.0",
            "ts": ts,
            "params": {"did": device_id, "msgid": msgid, "key": "", "requesterId": ""},
            "mid": msgid,
        }
    )
    return head[:-1] + b',"events":[' + b",".join(events) + b"]}"
