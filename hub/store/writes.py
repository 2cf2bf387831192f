"""Writing events: the statements a group commit runs, on the writer's thread, inside its transaction."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..telemetry import Checked, sqlite_text

T = TypeVar("T")

# (sha256, name, imported_at ms, format, report JSON): a file's row in the import ledger.
LedgerRow = tuple[str, str, int, str, str]

_INSERT_EVENT = "INSERT OR IGNORE INTO events (seq, mid, did, eid, ets, channel, pdata_id, received_at, source) VALUES "
_EVENT_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_CHUNK = 64  # rows per statement: 576 parameters, well under SQLite's limit


def next_seq(conn: sqlite3.Connection) -> int:
    """The first free seq, read inside the writer's transaction (another process may have added events)."""
    row = conn.execute(
        "SELECT max((SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce(max(seq), 0) FROM event_raw))"
    ).fetchone()
    return int(row[0]) + 1


def insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], raws: list[bytes], seq: int) -> int:
    """Insert event rows (mid, did, eid, ets, channel, pdata_id, received_at, source) and their bytes
    under seqs from `seq` on, skipping known mids; return how many were new.

    Seqs are given here so the bytes can go to event_raw under the same seq; a row the mid index
    refused leaves its seq unused and its bytes unstored. Many rows per statement, not
    executemany: sqlite3 releases and retakes the GIL around every statement it steps, so one row
    per statement meant one GIL hand-over per event between the writer thread and the event loop
    (measured under the batch benchmark: writer thread CPU 54% -> 43-48% for the same rate).
    Statement texts come in at most _INSERT_CHUNK sizes, so sqlite3's statement cache keeps them.
    """
    new = 0
    for i in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[i : i + _INSERT_CHUNK]
        first = seq
        params: list[Any] = []
        for row in chunk:
            params.append(seq)
            params.extend(row)
            seq += 1
        sql = _INSERT_EVENT + ", ".join([_EVENT_VALUES] * len(chunk))
        added = max(conn.execute(sql, params).rowcount, 0)
        if added == len(chunk):
            kept = list(range(first, seq))
        elif added:
            kept = [s for (s,) in conn.execute("SELECT seq FROM events WHERE seq >= ? AND seq < ?", (first, seq))]
        else:
            continue
        conn.execute(
            "INSERT INTO event_raw (seq, raw) VALUES " + ", ".join(["(?, ?)"] * len(kept)),
            [v for s in kept for v in (s, raws[i + s - first])],
        )
        new += added
    return new


def in_transaction(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run job(conn) in its own transaction, on the writer's thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = job(conn)
        conn.execute("COMMIT")
        return result
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def bare(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run job(conn) outside a transaction (incremental vacuum, checkpoints)."""
    return job(conn)


def request_rows(
    checked: Checked, source: str, device: str | None, now_ms: int, keep: int
) -> tuple[list[tuple[Any, ...]], list[bytes], list[tuple[Any, ...]]]:
    """One request's event rows, their bytes, and its quarantine rows.

    Of a malformed event only a bounded prefix is kept, with its real size and SHA-256: a flood of
    junk cannot fill the store. Event fields are already SQLite-safe (see telemetry.Event); only the
    request's own source and device need care.
    """
    src, dev = sqlite_text(source), sqlite_text(device)
    rows = [(e.mid, dev or e.did, e.eid, e.ets, e.channel, e.pdata_id, now_ms, src) for e in checked.events]
    quarantine = [
        (now_ms, src, dev, sqlite_text(q.mid), q.reason, q.raw[:keep], len(q.raw), hashlib.sha256(q.raw).hexdigest())
        for q in checked.quarantined
    ]
    return rows, [e.raw for e in checked.events], quarantine


# One request's share of a group commit: event rows, their bytes, quarantine rows, an import ledger row.
RequestPlan = tuple[list[tuple[Any, ...]], list[bytes], list[tuple[Any, ...]], LedgerRow | None]


def apply_group(conn: sqlite3.Connection, plan: list[RequestPlan], devices: dict[str, int], now_ms: int) -> list[int]:
    """The whole group commit, on the writer's thread: one transaction, one fsync; new events per request."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        news: list[int] = []
        seq = next_seq(conn)
        for rows, raws, quarantine, ledger in plan:
            news.append(insert_events(conn, rows, raws, seq) if rows else 0)
            seq += len(rows)
            if quarantine:
                conn.executemany(
                    "INSERT INTO quarantine (received_at, source, did, mid, reason, raw, size, sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    quarantine,
                )
            if ledger is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO imports (sha256, name, imported_at, format, report) VALUES (?, ?, ?, ?, ?)",
                    ledger,
                )
        if devices:
            conn.executemany(
                "INSERT INTO devices (did, first_seen, last_seen, events) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(did) DO UPDATE SET last_seen = excluded.last_seen, events = events + excluded.events",
                [(did, now_ms, now_ms, n) for did, n in devices.items()],
            )
        per_device = _per_device(plan, news)
        if per_device:
            conn.executemany(
                "UPDATE devices SET requests = requests + ?, duplicates = duplicates + ? WHERE did = ?", per_device
            )
        total_new = sum(news)
        total = sum(len(rows) + len(q) for rows, _, q, _ in plan)
        duplicates = sum(len(rows) for rows, _, _, _ in plan) - total_new
        add_counters(conn, {"duplicates": duplicates, "received": total, "stored": total_new})
        add_hourly(conn, now_ms, "received", total_new)
        conn.execute("COMMIT")
        return news
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def _per_device(plan: list[RequestPlan], news: list[int]) -> list[tuple[int, int, str]]:
    """(requests, duplicates, did) per device of a group: a request counts for each device in it; its
    duplicates only when it came from one device (what the ingest answer can attribute)."""
    out: dict[str, list[int]] = {}
    for (rows, _, _, _), new in zip(plan, news, strict=True):
        dids = {row[1] for row in rows if row[1]}
        for did in dids:
            counts = out.setdefault(did, [0, 0])
            counts[0] += 1
            if len(dids) == 1:
                counts[1] += len(rows) - new
    return [(r, d, did) for did, (r, d) in out.items()]


def add_counters(conn: sqlite3.Connection, counters: Mapping[str, int]) -> None:
    """Add to named counters inside the caller's transaction."""
    items = [(name, n) for name, n in counters.items() if n]
    if items:
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            items,
        )


def add_hourly(conn: sqlite3.Connection, now_ms: int, kind: str, n: int) -> None:
    """Add n to this hour's count of `kind` (the status page's chart), inside the caller's transaction."""
    if n:
        conn.execute(
            "INSERT INTO hourly (hour, kind, n) VALUES (?, ?, ?) ON CONFLICT(hour, kind) DO UPDATE SET n = n + excluded.n",
            (now_ms // 3_600_000, kind, n),
        )


def record_delivery(conn: sqlite3.Connection, batch_id: int, now: int) -> int:
    """Mark a batch's events delivered and close the batch, inside the caller's transaction."""
    cur = conn.execute(
        "UPDATE events INDEXED BY events_batch SET delivered_at = ? WHERE batch_id = ? AND delivered_at IS NULL",
        (now, batch_id),
    )
    n = max(cur.rowcount, 0)
    conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
    add_counters(conn, {"delivered": n})
    add_hourly(conn, now, "delivered", n)
    return n
