"""Export the store's events to a telemetry archive ZIP that any hub (or the Sunbird app) imports.

Export marks nothing delivered: the events stay queued for upstream, which dedups by mid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from .. import __version__
from ..errors import HubError
from ..store import EventCursor
from .archive import write_archive
from .formats import ExportReport
from .report import iso_time

__all__ = ["EXPORT_PRODUCER", "NothingToExport", "export_archive", "parse_since"]

EXPORT_PRODUCER = {"id": "telemetry-hub", "ver": __version__, "pid": "telemetry-hub"}

# Export batches: as many events as the mobile app puts in one batch, and about what upstream takes per request.
_EXPORT_BATCH_EVENTS = 200
_EXPORT_BATCH_BYTES = 1_000_000


class NothingToExport(HubError):
    """The export found no events matching what was asked; no file was written."""


def parse_since(value: str) -> int:
    """`--since` as epoch ms: digits are epoch ms; else an ISO date or time (local time when no zone is given)."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"since: {value!r} is neither an ISO date/time (2024-05-01, 2024-05-01T08:00) nor epoch milliseconds"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # naive means the hub's local time
    return int(when.timestamp() * 1000)


def _batches(events: Iterable[bytes], counter: list[int], batch_events: int, batch_bytes: int) -> Iterator[list[bytes]]:
    """Events cut into batches by count and size, one batch in memory at a time."""
    batch: list[bytes] = []
    size = 0
    for raw in events:
        if batch and (len(batch) >= batch_events or size + len(raw) > batch_bytes):
            yield batch
            batch, size = [], 0
        batch.append(raw)
        size += len(raw)
        counter[0] += 1
    if batch:
        yield batch


def export_archive(
    db_path: Path,
    out: Path,
    *,
    hub_id: str,
    pending: bool = True,
    since_ms: int | None = None,
    batch_events: int = _EXPORT_BATCH_EVENTS,
    batch_bytes: int = _EXPORT_BATCH_BYTES,
) -> ExportReport:
    """Write the store's events to a telemetry archive ZIP (blocking; run it in a thread). Marks nothing delivered.

    The store's export cursor has a read-only connection of its own, so the hub's writer and readers
    are never held up.
    """
    with EventCursor(db_path) as cursor:
        counter = [0]
        batches = _batches(cursor.events(pending=pending, since_ms=since_ms), counter, batch_events, batch_bytes)
        try:
            return write_archive(Path(out), batches, producer=EXPORT_PRODUCER, device_id=hub_id)
        except ValueError:
            if counter[0]:
                raise
            what = "waiting for upstream" if pending else "kept"
            when = f" received since {iso_time(since_ms)}" if since_ms is not None else ""
            raise NothingToExport(f"no events {what}{when}: nothing to export, no file written") from None
