"""The SQLite event store: the one hand-over point between what comes in and what goes out."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiosqlite

from .config import StoreConfig
from .errors import StoreClosed, StoreFull
from .telemetry import Checked, sqlite_text

__all__ = ["AddResult", "Batch", "Store", "StoreStats", "SCHEMA_VERSION", "Taken"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A group commit takes at most this many requests; more wait for the next commit.
_MAX_GROUP_REQUESTS = 256
# How often the disk and file sizes are re-read for the cap check (seconds).
_SPACE_CHECK_INTERVAL_S = 1.0
# Every this many space checks the backlog is recounted from the table (another process, such as
# `telemetry-hub import --data-dir`, may have added events).
_RECOUNT_EVERY = 30
# The writer's page cache: keeps the mid index hot for dedup (measured: +40% inserts/s over 2 MiB).
_WRITER_CACHE_KIB = 16 * 1024


def _wal_bytes(max_bytes: int) -> int:
    """How much WAL to gather before copying it into the database (SQLite's default is 4 MiB).

    Random mids scatter every commit over the mid index, and each checkpoint writes those pages
    again with random writes and an fsync; checkpointing every 32 MiB instead of every 4 MiB cut
    the disk's busy time under the batch benchmark by 60% and raised ingest by 10-20%. It costs up
    to that much more disk, so the WAL stays within 1/16 of store.max_bytes.
    """
    return max(4 * 2**20, min(32 * 2**20, max_bytes // 16))

_MIGRATIONS: list[str] = [
    # v1: events, quarantine, devices, counters.
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        mid TEXT NOT NULL UNIQUE,
        did TEXT,
        eid TEXT NOT NULL,
        ets REAL NOT NULL,
        channel TEXT,
        pdata_id TEXT,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        raw BLOB NOT NULL,
        batch_id INTEGER,
        delivered_at INTEGER
    );
    CREATE INDEX events_pending ON events(seq) WHERE delivered_at IS NULL;
    CREATE INDEX events_delivered ON events(delivered_at) WHERE delivered_at IS NOT NULL;
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        did TEXT,
        mid TEXT,
        reason TEXT NOT NULL,
        raw BLOB NOT NULL
    );
    CREATE TABLE devices (
        did TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        events INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # v2: upstream delivery (batches with a fixed msgid, dead letters) and the import ledger.
    """
    CREATE INDEX events_route ON events(channel, pdata_id, seq) WHERE delivered_at IS NULL AND batch_id IS NULL;
    CREATE INDEX events_batch ON events(batch_id, seq) WHERE delivered_at IS NULL AND batch_id IS NOT NULL;
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        msgid TEXT NOT NULL UNIQUE,
        channel TEXT,
        pdata_id TEXT,
        events INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE TABLE dead_letter (
        id INTEGER PRIMARY KEY,
        mid TEXT NOT NULL UNIQUE,
        did TEXT,
        eid TEXT NOT NULL,
        ets REAL NOT NULL,
        channel TEXT,
        pdata_id TEXT,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        raw BLOB NOT NULL,
        reason TEXT NOT NULL,
        failed_at INTEGER NOT NULL
    );
    CREATE TABLE imports (
        sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        imported_at INTEGER NOT NULL,
        format TEXT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE hourly (
        hour INTEGER NOT NULL,
        kind TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (hour, kind)
    );
    """,
    # v3: event bytes move to their own table. Taking a batch and recording its delivery rewrite
    # each event's row twice; with the ~1 KB of JSON in the row, draining a backlog wrote 4.2 KB
    # to disk per delivered event, without it 1.3 KB (measured back to back, 300,000 events).
    # SQLite older than 3.35 cannot drop a column, so the table is rebuilt. 'stored' counts events
    # ever stored (seqs now have gaps where a duplicate was refused).
    """
    CREATE TABLE event_raw (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL);
    INSERT INTO event_raw (seq, raw) SELECT seq, raw FROM events;
    CREATE TABLE events_v3 (
        seq INTEGER PRIMARY KEY,
        mid TEXT NOT NULL UNIQUE,
        did TEXT,
        eid TEXT NOT NULL,
        ets REAL NOT NULL,
        channel TEXT,
        pdata_id TEXT,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        batch_id INTEGER,
        delivered_at INTEGER
    );
    INSERT INTO events_v3 (seq, mid, did, eid, ets, channel, pdata_id, received_at, source, batch_id, delivered_at)
        SELECT seq, mid, did, eid, ets, channel, pdata_id, received_at, source, batch_id, delivered_at FROM events;
    DROP TABLE events;
    ALTER TABLE events_v3 RENAME TO events;
    CREATE INDEX events_pending ON events(seq) WHERE delivered_at IS NULL;
    CREATE INDEX events_delivered ON events(delivered_at) WHERE delivered_at IS NOT NULL;
    CREATE INDEX events_route ON events(channel, pdata_id, seq) WHERE delivered_at IS NULL AND batch_id IS NULL;
    CREATE INDEX events_batch ON events(batch_id, seq) WHERE delivered_at IS NULL AND batch_id IS NOT NULL;
    CREATE VIEW stored_events AS SELECT events.*, event_raw.raw FROM events JOIN event_raw USING (seq);
    INSERT OR IGNORE INTO counters (name, value) SELECT 'stored', coalesce(max(seq), 0) FROM events;
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)
# Migrations that copy every event once (a table rebuild): they need room on the disk first.
_REBUILDS = frozenset({3})
# Pages handed back to the file system per step after a rebuild, so the WAL stays small meanwhile.
_RECLAIM_PAGES = 8192
# Room asked for beyond the two copies a rebuild makes (new indexes, the -shm file).
_MIGRATE_MARGIN = 1 * 2**20

_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (seq, mid, did, eid, ets, channel, pdata_id, received_at, source) VALUES "
)
_EVENT_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_CHUNK = 64  # rows per statement: 576 parameters, well under SQLite's limit


def _next_seq(conn: sqlite3.Connection) -> int:
    """The first free seq, read inside the writer's transaction (another process may have added events)."""
    row = conn.execute(
        "SELECT max((SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce(max(seq), 0) FROM event_raw))"
    ).fetchone()
    return int(row[0]) + 1


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], raws: list[bytes], seq: int) -> int:
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
        chunk = rows[i:i + _INSERT_CHUNK]
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


def _transaction(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
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


def _bare(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run job(conn) outside a transaction (incremental vacuum, checkpoints)."""
    return job(conn)


# One request's share of a group commit: event rows, their bytes, quarantine rows, extra statements.
_RequestPlan = tuple[
    list[tuple[Any, ...]], list[bytes], list[tuple[Any, ...]], Sequence[tuple[str, Sequence[Any]]]
]


def _apply_group(conn: sqlite3.Connection, plan: list[_RequestPlan], devices: dict[str, int], now_ms: int) -> list[int]:
    """The whole group commit, on the writer's thread: one transaction, one fsync; new events per request."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        news: list[int] = []
        seq = _next_seq(conn)
        for rows, raws, quarantine, extra in plan:
            news.append(_insert_events(conn, rows, raws, seq) if rows else 0)
            seq += len(rows)
            if quarantine:
                conn.executemany(
                    "INSERT INTO quarantine (received_at, source, did, mid, reason, raw) VALUES (?, ?, ?, ?, ?, ?)",
                    quarantine,
                )
            for sql, params in extra:
                conn.execute(sql, params)
        if devices:
            conn.executemany(
                "INSERT INTO devices (did, first_seen, last_seen, events) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(did) DO UPDATE SET last_seen = excluded.last_seen, events = events + excluded.events",
                [(did, now_ms, now_ms, n) for did, n in devices.items()],
            )
        total_new = sum(news)
        total = sum(len(rows) + len(q) for rows, _, q, _ in plan)
        duplicates = sum(len(rows) for rows, _, _, _ in plan) - total_new
        _add_counters(conn, {"duplicates": duplicates, "received": total, "stored": total_new})
        _add_hourly(conn, now_ms, "received", total_new)
        conn.execute("COMMIT")
        return news
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


@dataclass(frozen=True, slots=True)
class Batch:
    """An upstream batch: its fixed msgid and the channel / producer its events share."""

    id: int
    msgid: str
    channel: str | None
    pdata_id: str | None


class Taken(NamedTuple):
    """What take_batch found: the batch to send (None: nothing waits) and how many it recorded delivered."""

    batch: Batch | None
    rows: list[tuple[int, str, bytes]]
    delivered: int


def _add_counters(conn: sqlite3.Connection, counters: Mapping[str, int]) -> None:
    """Add to named counters inside the caller's transaction."""
    items = [(name, n) for name, n in counters.items() if n]
    if items:
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            items,
        )


def _add_hourly(conn: sqlite3.Connection, now_ms: int, kind: str, n: int) -> None:
    """Add n to this hour's count of `kind` (the status page's chart), inside the caller's transaction."""
    if n:
        conn.execute(
            "INSERT INTO hourly (hour, kind, n) VALUES (?, ?, ?) ON CONFLICT(hour, kind) DO UPDATE SET n = n + excluded.n",
            (now_ms // 3_600_000, kind, n),
        )


def _record_delivery(conn: sqlite3.Connection, batch_id: int, now: int) -> int:
    """Mark a batch's events delivered and close the batch, inside the caller's transaction."""
    cur = conn.execute(
        "UPDATE events INDEXED BY events_batch SET delivered_at = ? WHERE batch_id = ? AND delivered_at IS NULL",
        (now, batch_id),
    )
    n = max(cur.rowcount, 0)
    conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
    _add_counters(conn, {"delivered": n})
    _add_hourly(conn, now, "delivered", n)
    return n


@dataclass(frozen=True, slots=True)
class AddResult:
    """What one request's events became once committed."""

    new: int
    duplicates: int
    quarantined: int


@dataclass
class _Pending:
    checked: Checked
    source: str
    device: str | None
    future: asyncio.Future[AddResult]
    size: int
    extra: Sequence[tuple[str, Sequence[Any]]] = ()


@dataclass
class StoreStats:
    """Live figures kept in memory so health checks never scan the table."""

    backlog: int = 0
    delivered: int = 0
    dead_letters: int = 0
    stored_total: int = 0
    duplicates: int = 0
    quarantined: int = 0
    commits: int = 0
    committed_requests: int = 0
    last_commit_at: float = 0.0
    last_commit_s: float = 0.0
    last_group_events: int = 0
    db_bytes: int = 0
    free_bytes: int = 0
    full_reason: str | None = None
    schema_warnings: dict[str, int] = field(default_factory=dict)
    schema_unchecked: int = 0


class Store:
    """Durable store: a single writer task commits everything queued in one transaction."""

    def __init__(self, path: Path, cfg: StoreConfig) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.stats = StoreStats()
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Pending | Callable[[aiosqlite.Connection], Awaitable[Any]]] = asyncio.Queue()
        self._jobs: list[tuple[Callable[[aiosqlite.Connection], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._space_task: asyncio.Task[None] | None = None
        self._closing = False
        self._pending_bytes = 0
        self._listeners: list[Callable[[], None]] = []
        self.commit_hooks: list[Callable[[float, int], None]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating or migrating) the database and start the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute("PRAGMA busy_timeout=10000")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
        wal_bytes = _wal_bytes(self.cfg.max_bytes)
        async with self._db.execute("PRAGMA page_size") as cur:
            page_size = (await cur.fetchone() or (4096,))[0]
        await self._db.execute(f"PRAGMA wal_autocheckpoint={wal_bytes // page_size}")
        await self._db.execute(f"PRAGMA journal_size_limit={wal_bytes}")
        await self._migrate(self._db)
        self._reader = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout=10000")
        await self._load_stats()
        await self._refresh_space()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._space_task = asyncio.create_task(self._space_loop(), name="store-space")
        log.info("store open: %s (schema v%d, %d events waiting for upstream)", self.path, SCHEMA_VERSION, self.stats.backlog)

    async def close(self) -> None:
        """Finish every queued write, then close the database."""
        if self._closing:
            return
        self._closing = True
        if self._space_task:
            self._space_task.cancel()
        if self._writer:
            await self._queue.put(_STOP)  # type: ignore[arg-type]
            await self._writer
        for conn in (self._reader, self._db):
            if conn is not None:
                await conn.close()
        self._db = self._reader = None
        log.info("store closed: %s", self.path)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cur:
            (version,) = await cur.fetchone()  # type: ignore[misc]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database {self.path} has schema v{version}, newer than this hub (v{SCHEMA_VERSION}); "
                "install the newer telemetry-hub again or restore a backup"
            )
        rebuilds = version > 0 and any(v in _REBUILDS for v in range(version + 1, SCHEMA_VERSION + 1))
        if rebuilds:
            await asyncio.to_thread(self._check_room_to_migrate, version)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            if version:  # an existing store (a new one is simply created)
                log.info("store schema: migrating %s to v%d; on a large store this can take minutes",
                         self.path, target)
            await db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _MIGRATIONS[target - 1].split(";"):
                    if stmt.strip():
                        await db.execute(stmt)
                await db.execute(f"PRAGMA user_version={target}")
                await db.execute("COMMIT")
            except BaseException as exc:
                await db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
                    raise StoreFull(self._no_room_to_migrate(version)) from None
                raise
            log.info("store schema migrated to v%d", target)
        if rebuilds:
            await self._reclaim(db)

    def _no_room_to_migrate(self, version: int, needed: int | None = None, free: int | None = None) -> str:
        room = f"about {needed // 2**20} MiB free ({free // 2**20} MiB are)" if needed and free is not None else "room"
        return (f"upgrading the store {self.path} from schema v{version} to v{SCHEMA_VERSION} copies every event "
                f"once and needs {room} on the disk holding it. Free disk space (or move the data directory "
                "to a larger disk) and start the hub again; the store is unchanged")

    def _check_room_to_migrate(self, version: int) -> None:
        """Refuse to start a rebuild the disk cannot hold (it would roll back, and the hub would not start).

        The copy goes to the WAL first, then into the file while the WAL is still there: two copies.
        store.min_free_bytes is not added: a hub that upgrades and then sits below its floor still
        forwards, and so makes room, where a hub that does not start cannot.
        """
        size, free = self._measure()
        needed = 2 * size + _MIGRATE_MARGIN
        if free < needed:
            raise StoreFull(self._no_room_to_migrate(version, needed, free))

    async def _reclaim(self, db: aiosqlite.Connection) -> None:
        """Give the pages a rebuild left free back to the file system, in steps, checkpointing between them."""

        async def value(pragma: str) -> int:
            async with db.execute(pragma) as cur:
                rows = await cur.fetchall()
            return int(rows[0][0]) if rows and rows[0] and rows[0][0] is not None else 0

        if await value("PRAGMA auto_vacuum") != 2:  # a file made without incremental vacuum keeps its pages
            return
        free = await value("PRAGMA freelist_count")
        while free:
            await value(f"PRAGMA incremental_vacuum({_RECLAIM_PAGES})")
            await value("PRAGMA wal_checkpoint(TRUNCATE)")
            free, before = await value("PRAGMA freelist_count"), free
            if free >= before:
                break
        log.info("store schema: space left by the upgrade handed back; %s is %d MiB",
                 self.path, self._measure()[0] // 2**20)

    async def _load_stats(self) -> None:
        s = self.stats
        s.backlog = await self._scalar("SELECT count(*) FROM events WHERE delivered_at IS NULL")
        s.stored_total = await self._scalar("SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'stored'")
        s.quarantined = await self._scalar("SELECT count(*) FROM quarantine")
        s.duplicates = await self._scalar("SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'duplicates'")
        s.delivered = await self._scalar("SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'delivered'")
        s.dead_letters = await self._scalar("SELECT count(*) FROM dead_letter")

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        rows = await self.fetchall(sql, params)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    # ---- space -----------------------------------------------------------------------------

    def _measure(self) -> tuple[int, int]:
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        free = shutil.disk_usage(self.path.parent).free
        return size, free

    async def _refresh_space(self) -> None:
        size, free = await asyncio.to_thread(self._measure)
        s = self.stats
        s.db_bytes, s.free_bytes = size, free
        self._pending_bytes = 0
        was = s.full_reason
        if size >= self.cfg.max_bytes:
            s.full_reason = (
                f"the store holds {size // 2**20} MiB, at its cap of {self.cfg.max_bytes // 2**20} MiB "
                "(store.max_bytes); new data waits until upstream takes the backlog or the cap is raised"
            )
        elif free <= self.cfg.min_free_bytes:
            s.full_reason = (
                f"only {free // 2**20} MiB free on the disk holding {self.path.parent}, below "
                f"store.min_free_bytes ({self.cfg.min_free_bytes // 2**20} MiB); free disk space"
            )
        else:
            s.full_reason = None
        if s.full_reason != was:
            if s.full_reason:
                log.warning("refusing new telemetry: %s", s.full_reason)
            else:
                log.info("accepting telemetry again: space is available")

    async def _space_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(_SPACE_CHECK_INTERVAL_S)
            ticks += 1
            try:
                await self._refresh_space()
                if self.stats.full_reason and await self._make_room():
                    await self._refresh_space()
                if ticks % _RECOUNT_EVERY == 0:
                    await self.recount()
            except (OSError, sqlite3.Error, StoreFull) as exc:
                log.warning("cannot measure the store %s: %s", self.path, exc)

    async def _make_room(self) -> int:
        """When full, delete delivered events early (upstream has them), so devices are not refused for days.

        Retention is for re-export and investigation; taking new telemetry matters more. Undelivered
        events are never deleted. Returns how many events were deleted.
        """
        if not await self._scalar("SELECT EXISTS (SELECT 1 FROM events INDEXED BY events_delivered"
                                  " WHERE delivered_at IS NOT NULL)"):
            return 0
        n = await self.prune(0)
        if n:
            log.warning("store full: deleted %d delivered events before store.retention_days to make room", n)
        return n

    def space_problem(self, incoming: int = 0) -> str | None:
        """Why new data cannot be taken now (cap or free-space floor), or None."""
        s = self.stats
        if s.full_reason:
            return s.full_reason
        # Bytes queued since the last measurement count against the cap too (x2: WAL, then the table).
        if s.db_bytes + 2 * (self._pending_bytes + incoming) >= self.cfg.max_bytes:
            return (
                f"the store is at its cap of {self.cfg.max_bytes // 2**20} MiB (store.max_bytes); "
                "new data waits until upstream takes the backlog or the cap is raised"
            )
        return None

    def check_space(self, incoming: int = 0) -> None:
        """Raise StoreFull when the cap or the free-space floor would be crossed."""
        problem = self.space_problem(incoming)
        if problem:
            raise StoreFull(problem)

    # ---- writing ---------------------------------------------------------------------------

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call back (on the loop) after each commit that stored new events; wakes the forwarder."""
        self._listeners.append(callback)

    async def add(
        self,
        checked: Checked,
        *,
        source: str,
        device: str | None = None,
        extra: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> AddResult:
        """Queue one request's events; return once the commit that holds them has returned.

        `extra` statements (e.g. the import ledger row) run in the same transaction.
        """
        if self._closing or self._writer is None:
            raise StoreClosed("the hub is shutting down; retry in a moment")
        size = sum(len(e.raw) for e in checked.events) + sum(len(q.raw) for q in checked.quarantined)
        self.check_space(size)
        self._pending_bytes += size
        fut: asyncio.Future[AddResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(checked, source, device, fut, size, extra))
        return await fut

    async def write(self, job: Callable[[Any], Awaitable[T]] | Callable[[sqlite3.Connection], T], *,
                    transaction: bool = True) -> T:
        """Run a write job on the writer connection, in queue order, in its own transaction.

        The job is either `async def job(db: aiosqlite.Connection)` or a plain `def job(conn)` taking
        the sqlite3 connection, which runs on the writer's thread in one round trip (faster).

        transaction=False is for the few statements SQLite refuses inside one (incremental vacuum,
        checkpoints); they still go through the writer, so they never interleave with a commit.
        """
        if self._writer is None or self._writer.done():
            raise StoreClosed("the store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, fut, transaction))  # type: ignore[arg-type]
        return await fut

    async def _write_loop(self) -> None:
        assert self._db is not None
        stop = False
        while not stop:
            first = await self._queue.get()
            items = [first]
            while len(items) < _MAX_GROUP_REQUESTS and not self._queue.empty():
                items.append(self._queue.get_nowait())
            group: list[_Pending] = []
            jobs: list[tuple[Any, asyncio.Future[Any]]] = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Pending):
                    group.append(item)
                else:
                    jobs.append(item)  # type: ignore[arg-type]
            if group:
                await self._commit_group(group)
            for job, fut, transaction in jobs:
                await self._run_job(job, fut, transaction)
        # Anything queued after the stop marker is refused, not dropped silently.
        while not self._queue.empty():
            item = self._queue.get_nowait()
            fut = item.future if isinstance(item, _Pending) else item[1]  # type: ignore[union-attr,index]
            if not fut.done():
                fut.set_exception(StoreClosed("the hub is shutting down; retry in a moment"))

    async def _run_job(
        self, job: Callable[[aiosqlite.Connection], Awaitable[Any]], fut: asyncio.Future[Any], transaction: bool
    ) -> None:
        db = self._db
        assert db is not None
        try:
            if not inspect.iscoroutinefunction(job):
                # A plain function runs whole on the writer's thread: one round trip, not one per statement.
                result = await self._in_writer_thread(_transaction if transaction else _bare, job)
            else:
                if transaction:
                    await db.execute("BEGIN IMMEDIATE")
                result = await job(db)
                if transaction:
                    await db.execute("COMMIT")
        except BaseException as exc:  # the job's caller gets the error; the writer lives on
            if db.in_transaction:
                await db.execute("ROLLBACK")
            if not fut.done():
                fut.set_exception(self._translate(exc))
            if not isinstance(exc, Exception):
                raise
        else:
            if not fut.done():
                fut.set_result(result)

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
            self.stats.full_reason = (
                f"the disk is full (SQLite: {exc}); free disk space on the drive holding {self.path.parent}"
            )
            log.error("store write refused: %s", self.stats.full_reason)
            return StoreFull(self.stats.full_reason)
        return exc

    async def _in_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) on aiosqlite's own thread in one round trip.

        aiosqlite has no public call for this; without it a group commit costs a thread hop per
        statement (measured: one per request plus five), which is what limited ingest.
        """
        db = self._db
        assert db is not None
        return await db._execute(fn, db._conn, *args)  # noqa: SLF001

    async def _commit_group(self, group: list[_Pending]) -> None:
        db = self._db
        assert db is not None
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        devices: dict[str, int] = {}
        warnings: dict[str, int] = {}
        unchecked = 0
        plan: list[_RequestPlan] = []
        try:
            for p in group:
                source = sqlite_text(p.source)
                device = sqlite_text(p.device)
                # Event fields are already SQLite-safe (see telemetry.Event); only the request's own need care.
                rows = [(e.mid, device or e.did, e.eid, e.ets, e.channel, e.pdata_id, now_ms, source)
                        for e in p.checked.events]
                raws = [e.raw for e in p.checked.events]
                quarantine = [(now_ms, source, sqlite_text(p.device), sqlite_text(x.mid), x.reason, x.raw)
                              for x in p.checked.quarantined]
                for row in rows:
                    if row[1]:
                        devices[row[1]] = devices.get(row[1], 0) + 1
                for k, v in p.checked.warnings.items():
                    warnings[k] = warnings.get(k, 0) + v
                unchecked += p.checked.unchecked
                plan.append((rows, raws, quarantine, p.extra))
            news = await self._in_writer_thread(_apply_group, plan, devices, now_ms)
        except BaseException as exc:
            if len(group) > 1 and isinstance(exc, Exception) and not isinstance(exc, sqlite3.OperationalError):
                # Something in one request broke the commit (a bug, odd data): commit each request on its
                # own, so the others are not refused along with it. Nothing of the group was committed.
                log.error("store commit of %d requests failed (%s: %s); committing them one by one",
                          len(group), type(exc).__name__, exc)
                for p in group:
                    await self._commit_group([p])
                return
            err = self._translate(exc)
            for p in group:
                self._pending_bytes -= p.size
                if not p.future.done():
                    p.future.set_exception(err)
            if not isinstance(exc, Exception):
                raise
            log.error("store commit failed, %d requests refused (nothing acknowledged): %s", len(group), exc)
            return
        results = [AddResult(new, len(rows) - new, len(q)) for new, (rows, _, q, _) in zip(news, plan)]
        total_new = sum(r.new for r in results)
        total_dup = sum(r.duplicates for r in results)
        total_q = sum(r.quarantined for r in results)
        elapsed = time.monotonic() - started
        s = self.stats
        s.backlog += total_new
        s.stored_total += total_new
        s.duplicates += total_dup
        s.quarantined += total_q
        s.commits += 1
        s.committed_requests += len(group)
        s.last_commit_at = time.time()
        s.last_commit_s = elapsed
        s.last_group_events = total_new + total_dup
        for k, v in warnings.items():
            s.schema_warnings[k] = s.schema_warnings.get(k, 0) + v
        s.schema_unchecked += unchecked
        for p, r in zip(group, results):
            if not p.future.done():
                p.future.set_result(r)
        for hook in self.commit_hooks:
            hook(elapsed, total_new + total_dup + total_q)
        if total_new:
            for cb in self._listeners:
                cb()

    # ---- upstream delivery -----------------------------------------------------------------

    async def take_batch(
        self, max_events: int, max_bytes: int, exclude: Collection[int] = (), delivered: Sequence[int] = (),
        counters: Mapping[str, int] | None = None,
    ) -> Taken:
        """The batch to send next with its (seq, mid, raw) rows: an unfinished one (same msgid as before), else a new one.

        A new batch holds pending events of one channel and one producer (upstream stamps the
        whole request with one X-Channel-Id / X-App-Id), oldest first, within both limits. Its
        msgid is committed before it is sent, so every retry, even after a crash, reuses it.
        Batches in `exclude` (in flight) are left alone. `delivered` are batches upstream has just
        acknowledged: they are recorded in the same transaction (one commit per batch, not two), as are
        `counters` (e.g. bytes sent today). One round trip to the writer's thread; only this batch's
        rows are read, never the backlog.
        """
        skip = tuple(exclude)
        now = int(time.time() * 1000)

        def job(conn: sqlite3.Connection) -> Taken:
            n = sum(_record_delivery(conn, batch_id, now) for batch_id in delivered)
            _add_counters(conn, counters or {})
            found = take(conn)
            return Taken(*found, n) if found else Taken(None, [], n)

        def take(conn: sqlite3.Connection) -> tuple[Batch, list[tuple[int, str, bytes]]] | None:
            not_in = f" WHERE id NOT IN ({','.join('?' * len(skip))})" if skip else ""
            row = conn.execute(
                f"SELECT id, msgid, channel, pdata_id FROM batches{not_in} ORDER BY id LIMIT 1", skip
            ).fetchone()
            if row is not None:
                batch = Batch(*row)
                rows = conn.execute(
                    "SELECT seq, mid, raw FROM events INDEXED BY events_batch JOIN event_raw USING (seq)"
                    " WHERE batch_id = ? AND delivered_at IS NULL ORDER BY seq",
                    (batch.id,),
                ).fetchall()
                return batch, rows
            head = conn.execute(
                "SELECT channel, pdata_id FROM events WHERE delivered_at IS NULL AND batch_id IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            if head is None:
                return None
            channel, pdata_id = head
            rows = []
            size = 0
            for seq, mid, raw in conn.execute(
                "SELECT seq, mid, raw FROM events INDEXED BY events_route JOIN event_raw USING (seq)"
                " WHERE channel IS ? AND pdata_id IS ? AND delivered_at IS NULL AND batch_id IS NULL ORDER BY seq LIMIT ?",
                (channel, pdata_id, max_events),
            ):
                if rows and size + len(raw) + 1 > max_bytes:
                    break
                rows.append((seq, mid, raw))
                size += len(raw) + 1
            msgid = str(uuid.uuid4())
            cur = conn.execute(
                "INSERT INTO batches (msgid, channel, pdata_id, events, created_at) VALUES (?, ?, ?, ?, ?)",
                (msgid, channel, pdata_id, len(rows), int(time.time() * 1000)),
            )
            batch_id = int(cur.lastrowid or 0)
            # One statement per 500 rows: measured 2.4 ms for 200 rows, against 5.8 ms as 200 UPDATEs.
            for i in range(0, len(rows), 500):
                chunk = [r[0] for r in rows[i:i + 500]]
                conn.execute(
                    f"UPDATE events SET batch_id = ? WHERE seq IN ({','.join('?' * len(chunk))})"
                    " AND batch_id IS NULL AND delivered_at IS NULL",
                    (batch_id, *chunk),
                )
            return Batch(batch_id, msgid, channel, pdata_id), rows

        taken = await self.write(job)
        self.stats.backlog -= taken.delivered
        self.stats.delivered += taken.delivered
        return taken

    async def mark_delivered(self, batch_id: int) -> int:
        """Record upstream's 2xx for a batch (committed before anything else happens); return the count."""
        now = int(time.time() * 1000)
        n = await self.write(lambda conn: _record_delivery(conn, batch_id, now))
        self.stats.backlog -= n
        self.stats.delivered += n
        return n

    async def note_attempt(self, batch_id: int, error: str | None, counters: Mapping[str, int] | None = None) -> None:
        """Count a failed attempt on a batch and keep upstream's last answer with it (and add `counters`)."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE batches SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, batch_id))
            _add_counters(conn, counters or {})

        await self.write(job)

    async def counter(self, name: str) -> int:
        """A named counter's value (0 if never counted)."""
        return await self._scalar("SELECT value FROM counters WHERE name = ?", (name,))

    async def add_counters(self, counters: Mapping[str, int]) -> None:
        """Add to named counters in a commit of their own."""
        await self.write(lambda conn: _add_counters(conn, counters))

    async def drop_counters(self, prefix: str, keep: str) -> None:
        """Forget counters named prefix* except `keep` (yesterday's upload bytes, say)."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM counters WHERE substr(name, 1, ?) = ? AND name != ?", (len(prefix), prefix, keep))

        await self.write(job)

    async def split_batch(self, batch_id: int, keep: int) -> None:
        """Keep the first `keep` events in the batch; the rest go into a new batch with its own msgid."""

        async def job(db: aiosqlite.Connection) -> None:
            async with db.execute(
                "SELECT seq FROM events WHERE batch_id = ? AND delivered_at IS NULL ORDER BY seq", (batch_id,)
            ) as cur:
                rows = await cur.fetchall()
            rest = [r[0] for r in rows[keep:]]
            if not rest:
                return
            async with db.execute("SELECT channel, pdata_id FROM batches WHERE id = ?", (batch_id,)) as cur:
                meta = await cur.fetchone()
            cur = await db.execute(
                "INSERT INTO batches (msgid, channel, pdata_id, events, created_at) VALUES (?, ?, ?, ?, ?)",
                (str(uuid.uuid4()), meta[0], meta[1], len(rest), int(time.time() * 1000)),  # type: ignore[index]
            )
            await db.executemany("UPDATE events SET batch_id = ? WHERE seq = ?", [(cur.lastrowid, s) for s in rest])
            await db.execute("UPDATE batches SET events = ? WHERE id = ?", (keep, batch_id))

        await self.write(job)

    async def release_tail(self, batch_id: int, keep: int) -> None:
        """Shrink a batch to its first `keep` events; the rest go back to the queue (after a 413)."""

        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE events SET batch_id = NULL WHERE batch_id = ? AND delivered_at IS NULL AND seq >"
                " (SELECT seq FROM events WHERE batch_id = ? AND delivered_at IS NULL ORDER BY seq LIMIT 1 OFFSET ?)",
                (batch_id, batch_id, keep - 1),
            )
            await db.execute("UPDATE batches SET events = ? WHERE id = ?", (keep, batch_id))

        await self.write(job)

    async def dead_letter(self, batch_id: int, reason: str) -> int:
        """Move a batch's events (upstream refused them) to the dead-letter table, with the reason."""
        now = int(time.time() * 1000)

        def job(conn: sqlite3.Connection) -> int:
            # Only what was copied is deleted: the seqs are read once, through the same join as the copy.
            seqs = [seq for (seq,) in conn.execute(
                "SELECT seq FROM events JOIN event_raw USING (seq) WHERE batch_id = ? AND delivered_at IS NULL",
                (batch_id,),
            )]
            marks = ",".join("?" * len(seqs))
            if seqs:
                conn.execute(
                    "INSERT OR REPLACE INTO dead_letter"
                    " (mid, did, eid, ets, channel, pdata_id, received_at, source, raw, reason, failed_at)"
                    " SELECT mid, did, eid, ets, channel, pdata_id, received_at, source, raw, ?, ?"
                    f" FROM events JOIN event_raw USING (seq) WHERE seq IN ({marks})",
                    (reason, now, *seqs),
                )
                conn.execute(f"DELETE FROM event_raw WHERE seq IN ({marks})", seqs)
                conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
            conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            return len(seqs)

        n = await self.write(job)
        self.stats.backlog -= n
        self.stats.dead_letters += n
        return n

    async def requeue_dead(self, mids: Sequence[str] | None = None) -> int:
        """Put dead letters back in the queue (all, or the given mids); returns how many."""
        where = "" if mids is None else f" AND mid IN ({','.join('?' * len(mids))})"
        params = tuple(mids or ())

        def job(conn: sqlite3.Connection) -> int:
            # A page at a time, so a large dead-letter table is never read into memory at once.
            n, last, seq = 0, 0, _next_seq(conn)
            while True:
                page = conn.execute(
                    "SELECT id, mid, did, eid, ets, channel, pdata_id, received_at, source, raw FROM dead_letter"
                    " WHERE id > ?" + where + " ORDER BY id LIMIT 500",
                    (last, *params),
                ).fetchall()
                if not page:
                    return n
                last = page[-1][0]
                n += _insert_events(conn, [r[1:9] for r in page], [r[9] for r in page], seq)
                seq += len(page)
                conn.execute(f"DELETE FROM dead_letter WHERE id IN ({','.join('?' * len(page))})",
                             [r[0] for r in page])

        n = await self.write(job)
        self.stats.backlog += n
        self.stats.dead_letters = await self.scalar("SELECT count(*) FROM dead_letter")
        for cb in self._listeners:
            cb()
        return n

    async def prune(self, retention_s: float, chunk: int = 5000) -> int:
        """Delete delivered events older than the retention period and give the pages back."""
        cutoff = int((time.time() - retention_s) * 1000)
        total = 0
        while True:

            def job(conn: sqlite3.Connection) -> int:
                seqs = [seq for (seq,) in conn.execute(
                    "SELECT seq FROM events INDEXED BY events_delivered"
                    " WHERE delivered_at IS NOT NULL AND delivered_at < ? LIMIT ?",
                    (cutoff, chunk),
                )]
                for i in range(0, len(seqs), 500):
                    part = seqs[i:i + 500]
                    marks = ",".join("?" * len(part))
                    conn.execute(f"DELETE FROM event_raw WHERE seq IN ({marks})", part)
                    conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", part)
                return len(seqs)

            n = await self.write(job)
            total += n
            if n < chunk:
                break
        if total:

            async def vacuum(db: aiosqlite.Connection) -> None:
                await db.execute("DELETE FROM hourly WHERE hour < ?", (int(time.time()) // 3600 - 24 * 8,))

            await self.write(vacuum)

            async def shrink(db: aiosqlite.Connection) -> None:
                # Hand freed pages back to the file system, then shrink the WAL; both outside a transaction.
                for pragma in ("PRAGMA incremental_vacuum", "PRAGMA wal_checkpoint(TRUNCATE)"):
                    async with db.execute(pragma) as cur:
                        await cur.fetchall()

            await self.write(shrink, transaction=False)
            log.info("retention: deleted %d delivered events older than %.1f days", total, retention_s / 86400)
        return total

    async def recount(self) -> None:
        """Re-read the backlog from the table (another process, e.g. `import --data-dir`, may have added)."""
        self.stats.backlog = await self._scalar("SELECT count(*) FROM events WHERE delivered_at IS NULL")
        self.stats.dead_letters = await self._scalar("SELECT count(*) FROM dead_letter")

    # ---- reading ---------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the reader connection (WAL: never blocks the writer)."""
        assert self._reader is not None
        # One round trip to the reader's thread (execute + fetch + close would be three).
        return list(await self._reader.execute_fetchall(sql, params))  # type: ignore[arg-type]

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One integer from a read-only query."""
        return await self._scalar(sql, params)

    def writer_alive(self) -> bool:
        """Whether the writer task is running (a dead writer means nothing can be acknowledged)."""
        return self._writer is not None and not self._writer.done()

    async def writable(self) -> bool:
        """Whether a write transaction can be taken right now (for /health)."""
        if self._writer is None or self._writer.done():
            return False

        async def probe(db: aiosqlite.Connection) -> bool:
            await db.execute("INSERT OR IGNORE INTO counters (name, value) VALUES ('health', 0)")
            return True

        try:
            return await asyncio.wait_for(self.write(probe), timeout=5.0)
        except (Exception, asyncio.TimeoutError):
            return False


_STOP = object()
