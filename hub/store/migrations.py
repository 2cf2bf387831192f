"""The schema and its migrations: the one place that says what the tables are."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from ..errors import StoreFull

log = logging.getLogger(__name__)

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
    # v4: quarantine keeps a bounded prefix of a malformed event, with the event's real size and a hash.
    """
    ALTER TABLE quarantine ADD COLUMN size INTEGER;
    ALTER TABLE quarantine ADD COLUMN sha256 TEXT;
    UPDATE quarantine SET size = length(raw);
    """,
    # v5: receipts look events up by mid in quarantine too (events and dead_letter have unique mids already).
    """
    CREATE INDEX quarantine_mid ON quarantine(mid) WHERE mid IS NOT NULL;
    """,
    # v6: one device's story. Requests and duplicates per device (counted from now on), and the indexes that
    # find one device's events and quarantine without scanning the store.
    """
    ALTER TABLE devices ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX events_did ON events(did, received_at) WHERE did IS NOT NULL;
    CREATE INDEX quarantine_did ON quarantine(did) WHERE did IS NOT NULL;
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)
# Migrations that copy every event once (a table rebuild): they need room on the disk first.
_REBUILDS = frozenset({3})
# Pages handed back to the file system per step after a rebuild, so the WAL stays small meanwhile.
_RECLAIM_PAGES = 8192
# Room asked for beyond the two copies a rebuild makes (new indexes, the -shm file).
_MIGRATE_MARGIN = 1 * 2**20


def _no_room(path: Path, version: int, needed: int | None = None, free: int | None = None) -> str:
    room = f"about {needed // 2**20} MiB free ({free // 2**20} MiB are)" if needed and free is not None else "room"
    return (
        f"upgrading the store {path} from schema v{version} to v{SCHEMA_VERSION} copies every event "
        f"once and needs {room} on the disk holding it. Free disk space (or move the data directory "
        "to a larger disk) and start the hub again; the store is unchanged"
    )


def _check_room(path: Path, version: int, measure: Callable[[], tuple[int, int]]) -> None:
    """Refuse to start a rebuild the disk cannot hold (it would roll back, and the hub would not start).

    The copy goes to the WAL first, then into the file while the WAL is still there: two copies.
    store.min_free_bytes is not added: a hub that upgrades and then sits below its floor still
    forwards, and so makes room, where a hub that does not start cannot.
    """
    size, free = measure()
    needed = 2 * size + _MIGRATE_MARGIN
    if free < needed:
        raise StoreFull(_no_room(path, version, needed, free))


async def migrate(db: aiosqlite.Connection, path: Path, measure: Callable[[], tuple[int, int]]) -> None:
    """Bring the database at `path` to SCHEMA_VERSION, one committed step per version."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database {path} has schema v{version}, newer than this hub (v{SCHEMA_VERSION}); "
            "install the newer telemetry-hub again or restore a backup"
        )
    rebuilds = version > 0 and any(v in _REBUILDS for v in range(version + 1, SCHEMA_VERSION + 1))
    if rebuilds:
        await asyncio.to_thread(_check_room, path, version, measure)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        if version:  # an existing store (a new one is simply created)
            log.info("store schema: migrating %s to v%d; on a large store this can take minutes", path, target)
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
                raise StoreFull(_no_room(path, version)) from None
            raise
        log.info("store schema migrated to v%d", target)
    if rebuilds:
        await _reclaim(db, path, measure)


async def _reclaim(db: aiosqlite.Connection, path: Path, measure: Callable[[], tuple[int, int]]) -> None:
    """Give the pages a rebuild left free back to the file system, in steps, checkpointing between them."""

    async def value(pragma: str) -> int:
        async with db.execute(pragma) as cur:
            rows = list(await cur.fetchall())
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
    log.info("store schema: space left by the upgrade handed back; %s is %d MiB", path, measure()[0] // 2**20)
