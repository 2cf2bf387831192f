"""The one raw-JSON splitter: slices a document's items and fields out as their original bytes.

Used by the device API (after the msgspec fast path) and by every Share Telemetry format, so
an event is never re-serialised on its way through the hub.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]  # public in CPython, missing from typeshed
from typing import Any, NamedTuple

import msgspec

# An item or field whose value was not decoded (only its bytes were kept).
UNPARSED: Any = msgspec.UNSET
_WS = re.compile(r"[ \t\n\r]*")


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line} column {col}"


class SplitError(json.JSONDecodeError):
    """Why a document could not be split, in neutral terms and with its position: each caller words it.

    `code` says what went wrong; `detail` and `limit` carry what the words need:
    "syntax" (detail: the decoder's words), "expected" (detail: the characters allowed at pos),
    "constant" (detail: NaN, Infinity or -Infinity), "value" (detail: the decoder's words, e.g. an
    integer of 5,000 digits), "deep" (nested too deeply), "too-many" (limit: the item limit),
    "two-events" (a second 'events' array), "events-not-array", "empty" (only whitespace),
    "not-json" (starts with neither '{' nor '['), "trailing" (detail: "array" or "envelope").
    For the value errors `pos` is where the value starts.
    """

    def __init__(self, code: str, doc: str, pos: int, detail: str = "", limit: int | None = None) -> None:
        super().__init__(f"{code} ({detail})" if detail else code, doc, pos)
        self.code = code
        self.detail = detail
        self.limit = limit


class _Constant(ValueError):
    """NaN/Infinity met by the decoder: valid Python, not JSON."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not valid JSON")
        self.name = name


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

# A top-level field: (its decoded value, or UNPARSED when not kept; start; end) in the splitter's text.
Span = tuple[Any, int, int]


class Items(NamedTuple):
    """The items of an array (or NDJSON document): each one's original bytes and, if kept, its value."""

    raws: list[bytes]
    values: list[Any]  # empty when the splitter does not keep values

    def pairs(self) -> list[tuple[Any, bytes]]:
        """(value, bytes) per item, as check_events takes them (UNPARSED values when not kept)."""
        if len(self.values) == len(self.raws):
            return list(zip(self.values, self.raws, strict=True))
        return [(UNPARSED, raw) for raw in self.raws]


class RawSplitter:
    """Walk a JSON document's top level and slice out each item's original text, never re-serialising it.

    The one splitter for device request bodies (split_envelope, split_array, after the msgspec fast
    path) and Share Telemetry files (hub.share.reader). Items come back as their original bytes and,
    with keep_values, their decoded values; without it each value is dropped as soon as it is checked,
    so a large file costs its bytes, not its objects. More than `max_items` items in one array (or
    NDJSON document) stop the walk at once. Errors are SplitError; callers word them.
    """

    def __init__(
        self, text: str, max_items: int | None = None, *, keep_values: bool = True, unique_events: bool = False
    ) -> None:
        self.text = text
        self.max_items = max_items
        self.keep_values = keep_values
        self.unique_events = unique_events  # a second 'events' array is an error (else the last one counts)

    def ws(self, i: int) -> int:
        """The index of the first non-whitespace character at or after i."""
        return _WS.match(self.text, i).end()  # type: ignore[union-attr]  # [ \t\n\r]* always matches

    def expect(self, i: int, allowed: str) -> int:
        """Skip whitespace from i; the next character must be one of `allowed`; its index."""
        i = self.ws(i)
        if i >= len(self.text) or self.text[i] not in allowed:
            raise SplitError("expected", self.text, i, allowed)
        return i

    def value(self, i: int) -> tuple[Any, int]:
        """Decode the JSON value at text[i]; (the value, the index after it)."""
        try:
            return _DECODER.raw_decode(self.text, i)
        except json.JSONDecodeError as exc:
            raise SplitError("syntax", self.text, exc.pos, exc.msg) from None
        except _Constant as exc:
            raise SplitError("constant", self.text, i, exc.name) from None
        except RecursionError:
            raise SplitError("deep", self.text, i) from None
        except ValueError as exc:  # integers with too many digits
            raise SplitError("value", self.text, i, str(exc)) from None

    def _item(self, items: Items, i: int) -> int:
        """Append the value at text[i] to items, checking the limit; the index after it."""
        obj, end = self.value(i)
        items.raws.append(self.text[i:end].encode())
        if self.keep_values:
            items.values.append(obj)
        if self.max_items is not None and len(items.raws) > self.max_items:
            raise SplitError("too-many", self.text, i, limit=self.max_items)
        return end

    def array(self, i: int) -> tuple[Items, int]:
        """The elements of the array at text[i] == '[', and the index after ']'."""
        text = self.text
        items = Items([], [])
        i = self.ws(i + 1)
        if text.startswith("]", i):
            return items, i + 1
        while True:
            i = self.expect(self._item(items, i), ",]")
            if text[i] == "]":
                return items, i + 1
            i = self.ws(i + 1)

    def object(self, i: int) -> tuple[dict[str, Span], Items | None, int]:
        """The object at text[i] == '{': its fields, the items of its 'events' array, and the index after '}'.

        A repeated key keeps its last span; the items are those of the last 'events' array, or None
        when there is none. Whether the last 'events' field is that array, its span tells.
        """
        text = self.text
        fields: dict[str, Span] = {}
        events: Items | None = None
        i = self.expect(i + 1, '"}')
        if text[i] == "}":
            return fields, events, i + 1
        while True:
            try:
                key, i = scanstring(text, i + 1, True)
            except json.JSONDecodeError as exc:
                raise SplitError("syntax", text, exc.pos, exc.msg) from None
            i = self.ws(self.expect(i, ":") + 1)
            if key == "events" and text.startswith("[", i):
                if events is not None and self.unique_events:
                    raise SplitError("two-events", text, i)
                events, end = self.array(i)
                fields[key] = (UNPARSED, i, end)
            else:
                obj, end = self.value(i)
                fields[key] = (obj if self.keep_values else UNPARSED, i, end)
            i = self.expect(end, ",}")
            if text[i] == "}":
                return fields, events, i + 1
            i = self.expect(i + 1, '"')

    def document(self) -> tuple[str, dict[str, Span], Items]:
        """Classify the whole text as "envelope" (an object with an 'events' array), "array" or "ndjson".

        Returns the kind, the envelope's fields ({} for the others) and the items: the envelope's
        events, the array's elements, or each of the JSON values that follow one another.
        """
        text = self.text
        i = self.ws(0)
        if i == len(text):
            raise SplitError("empty", text, i)
        if text.startswith("[", i):
            items, end = self.array(i)
            rest = self.ws(end)
            if rest != len(text):
                raise SplitError("trailing", text, rest, "array")
            return "array", {}, items
        if not text.startswith("{", i):
            raise SplitError("not-json", text, i)
        fields, events, end = self.object(i)
        rest = self.ws(end)
        if "events" in fields:
            if events is None:
                raise SplitError("events-not-array", text, fields["events"][1])
            if rest != len(text):
                raise SplitError("trailing", text, rest, "envelope")
            return "envelope", fields, events
        # NDJSON: JSON values one after another (one per line), the first object already walked.
        items = Items([text[i:end].encode()], [self.value(i)[0]] if self.keep_values else [])
        i = rest
        while i < len(text):
            i = self.ws(self._item(items, i))
        return "ndjson", {}, items

    def field(self, fields: dict[str, Span], key: str) -> Any:
        """The value of a top-level field (decoded again if it was not kept), or None if absent."""
        if key not in fields:
            return None
        obj, start, _ = fields[key]
        return self.value(start)[0] if obj is UNPARSED else obj
