"""What a Share Telemetry file is: format names, what a read yields, the limits, and the refusals in words."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ..config import ShareConfig
from ..errors import ShareFileError
from ..telemetry import RawSplitter, SplitError

__all__ = [
    "ARCHIVE_ID",
    "FORMAT_ARCHIVE",
    "FORMAT_ARRAY",
    "FORMAT_ENVELOPE",
    "FORMAT_GSA",
    "FORMAT_NDJSON",
    "ExportReport",
    "ShareBatch",
    "ShareFile",
    "ShareLimits",
]

log = logging.getLogger("hub.share")

MiB = 1024 * 1024
ARCHIVE_ID = "sunbird.data.archive"
FORMAT_ARCHIVE = "sunbird-archive-zip"
FORMAT_GSA = "gsa"
FORMAT_ENVELOPE = "envelope-json"
FORMAT_ARRAY = "event-array-json"
FORMAT_NDJSON = "ndjson"

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_RATIO_FLOOR = 1 * MiB  # ratios are judged only past this much output: tiny inputs compress absurdly well


# The limits are the [share] config section itself: one set of defaults, in config.py.
ShareLimits = ShareConfig


@dataclass
class ShareBatch:
    """One batch of a share file; events are the original JSON bytes so nothing is lost in re-serialising."""

    mid: str | None
    events: list[bytes]
    expected_count: int | None = None


@dataclass
class ShareFile:
    """A fully validated share file: the caller may commit all of it or nothing."""

    path: Path
    sha256: str
    format: str
    batches: list[ShareBatch]
    manifest_events: int | None = None
    device_id: str | None = None
    export_id: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def event_count(self) -> int:
        """Total events found, for reports."""
        return sum(len(b.events) for b in self.batches)


@dataclass
class ExportReport:
    """What write_archive produced, for the audit log and the admin page."""

    out: Path
    batches: int
    events: int
    mids: list[str]
    size: int


class _Bad(Exception):
    """Internal: the file is unusable; the reason becomes the ShareFileError message."""


def _fail(reason: str) -> NoReturn:
    raise _Bad(reason)


def _error(path: Path, reason: str) -> ShareFileError:
    err = ShareFileError(f"{path.name}: {reason}")
    err.path = path  # type: ignore[attr-defined]  # extra context for callers that show the file
    err.reason = reason  # type: ignore[attr-defined]  # the reason without our temp file name
    return err


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def _as_int(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _txt(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_EXPECTED = {
    '"}': "a property name in double quotes",
    '"': "a property name in double quotes",
    ":": "':'",
    ",}": "',' or '}'",
    ",]": "',' or ']'",
}


def _split_reason(exc: SplitError) -> str:
    """A splitter error (hub.telemetry.RawSplitter) in the share reader's words, after "the file" or similar."""
    code = exc.code
    if code == "empty":
        return "holds no JSON (only whitespace)"
    if code == "not-json":
        return f"is not JSON (starts with {exc.doc[exc.pos : exc.pos + 12]!r})"
    if code == "trailing":
        return f"has unexpected data after the JSON {exc.detail} at character {exc.pos}"
    if code == "events-not-array":
        return "has an 'events' field that is not an array"
    if code == "two-events":
        return "has two 'events' arrays"
    if code == "too-many":
        return f"holds more than {exc.limit} events (share.max_events)"
    if code == "deep":
        return "is not valid JSON (it is nested too deeply)"
    if code == "constant":
        return f"is not valid JSON ({exc.detail} is not allowed in JSON)"
    if code == "value":
        return f"is not valid JSON ({exc.detail})"
    if code == "expected":
        got = exc.doc[exc.pos : exc.pos + 1] or "end of data"
        msg = f"Expecting {_EXPECTED.get(exc.detail, exc.detail)}, found {got!r}"
    else:  # "syntax"
        msg = exc.detail or exc.msg
    return f"is not valid JSON ({msg} at line {exc.lineno} column {exc.colno})"


def _loads(text: str, what: str) -> Any:
    """Parse a small JSON document (manifest, envelope fields) with NaN/Infinity refused."""
    scan = RawSplitter(text)
    try:
        obj, end = scan.value(scan.ws(0))
    except SplitError as exc:
        _fail(f"{what} {_split_reason(exc)}")
    if scan.ws(end) != len(text):
        _fail(f"{what} is not valid JSON (extra data after the value at character {end})")
    return obj
