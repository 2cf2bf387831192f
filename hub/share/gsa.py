"""The legacy .gsa export: another program's SQLite database, read without writing, locking or trusting it."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

from .formats import ShareBatch, _as_int, _fail, _txt

if TYPE_CHECKING:
    from .reader import Reader

__all__ = ["read_gsa"]

_SQLITE_SECONDS = 120.0  # a hostile schema (views, huge overflow chains) must not hang the import


def read_gsa(r: Reader) -> list[ShareBatch]:
    """The telemetry batches of a legacy .gsa export (a SQLite database), opened read-only and immutable."""
    uri = r.path.resolve().as_uri() + "?mode=ro&immutable=1"  # never writes, locks or journals the user's file
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        _fail(f"the .gsa file cannot be opened as SQLite ({exc})")
    try:
        deadline = time.monotonic() + _SQLITE_SECONDS
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        con.text_factory = bytes
        con.execute("PRAGMA trusted_schema = OFF")
        con.execute("PRAGMA query_only = ON")
        return _gsa_batches(r, con)
    except sqlite3.OperationalError as exc:
        if "interrupt" in str(exc):
            _fail(f"reading the .gsa database took over {_SQLITE_SECONDS:.0f} s; refusing a hostile file")
        _fail(f"the .gsa SQLite database is corrupt or unreadable ({exc})")
    except sqlite3.Error as exc:
        _fail(f"the .gsa SQLite database is corrupt or unreadable ({exc})")
    finally:
        con.close()


def _gsa_batches(r: Reader, con: sqlite3.Connection) -> list[ShareBatch]:
    kinds = {
        _txt(n): _txt(t)
        for n, t in con.execute(
            "SELECT name, type FROM sqlite_master WHERE name IN ('meta_data', 'processed_telemetry')"
        )
    }
    for table in ("meta_data", "processed_telemetry"):
        if kinds.get(table) != "table":
            _fail(f"this SQLite file is not a Sunbird .gsa telemetry export: table {table!r} is missing")
    cols = {_txt(r[1]) for r in con.execute("PRAGMA table_info(processed_telemetry)")}
    missing = sorted({"msg_id", "data", "event_count"} - cols)
    if missing:
        _fail(f"table processed_telemetry lacks column(s) {', '.join(missing)}: not a Sunbird .gsa export")
    mcols = {_txt(r[1]) for r in con.execute("PRAGMA table_info(meta_data)")}
    if not {"key", "value"} <= mcols:
        _fail("table meta_data lacks its key/value columns: not a Sunbird .gsa export")
    meta: dict[str, str | None] = {}
    for k, v in con.execute("SELECT key, value FROM meta_data LIMIT ?", (r.limits.max_entries,)):
        if (key := _txt(k)) is not None:
            meta[key] = _txt(v)
    if not meta:
        _fail("the .gsa meta_data table is empty: not a telemetry export")
    types = meta.get("types") or ""
    if "telemetry" not in types:
        _fail(f"the .gsa meta_data says types {types!r}: this file holds no telemetry")
    if meta.get("version") != "1":
        r.problems.append(f".gsa meta_data version is {meta.get('version')!r}, expected '1'")
    r.device_id = meta.get("did") or None
    r.export_id = meta.get("export_id") or None
    declared = meta.get("events_count")
    r.manifest_events = _as_int(declared)
    if declared is not None and r.manifest_events is None:
        r.problems.append(f".gsa meta_data events_count {declared!r} is not a number")
    order = " ORDER BY _id" if "_id" in cols else ""
    batches: list[ShareBatch] = []
    for n, (msg_id, data, count) in enumerate(
        con.execute(f"SELECT msg_id, data, event_count FROM processed_telemetry{order}")
    ):
        if n >= r.limits.max_entries:
            _fail(f"the .gsa holds more than {r.limits.max_entries} batches (share.max_entries)")
        mid = _txt(msg_id) or None
        label = f"batch {mid}" if mid else f"batch row {n + 1}"
        if not isinstance(data, bytes) or not data:
            _fail(f"{label} has no data")
        expected = _as_int(_txt(count))
        batches.append(r.batch(data, label, mid, expected, "processed_telemetry.event_count"))
    found = sum(len(b.events) for b in batches)
    if r.manifest_events is not None and r.manifest_events != found:
        _fail(
            f"the .gsa meta_data says events_count {r.manifest_events} but its batches hold {found}; "
            "the file is inconsistent, so nothing was imported"
        )
    if not batches:
        _fail("the .gsa file holds no telemetry batches: nothing to import")
    return batches
