"""The store on its own: durability settings, schema migration from v1, counters kept.

Stores come from the `store` / `open_store` fixtures (conftest.py), which close them afterwards.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from reliability.helpers import version_2_store

from hub.config import StoreConfig
from hub.store import SCHEMA_VERSION, Store
from hub.store.migrations import _MIGRATIONS
from hub.telemetry import Checked, Event


def _rows(store: Store, sql: str) -> list[tuple]:
    """Read the store's file with a connection of our own, as an outsider would."""
    con = sqlite3.connect(store.path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _one(store: Store, sql: str) -> int:
    return _rows(store, sql)[0][0]


def _event(mid: str) -> Event:
    return Event(raw=b'{"mid":"%s"}' % mid.encode(), mid=mid, eid="LOG", ets=1.0, did="d", channel="c", pdata_id="p")


async def test_wal_and_full_sync(store):
    rows = _rows(store, "PRAGMA journal_mode")
    assert rows == [("wal",)]
    sync = await (await store._db.execute("PRAGMA synchronous")).fetchone()
    assert sync == (2,)  # FULL
    auto_vacuum = await (await store._db.execute("PRAGMA auto_vacuum")).fetchone()
    assert auto_vacuum == (2,)  # INCREMENTAL, so retention can give space back


async def test_wal_is_checkpointed_in_larger_steps_within_the_cap(open_store, tmp_path):
    """32 MiB of WAL between checkpoints by default, but never more than 1/16 of a small cap."""
    for max_bytes, want in ((StoreConfig().max_bytes, 32 * 2**20), (128 * 2**20, 8 * 2**20), (2**20, 4 * 2**20)):
        store = await open_store(tmp_path / f"hub-{max_bytes}.db", StoreConfig(max_bytes=max_bytes))
        pages = await (await store._db.execute("PRAGMA wal_autocheckpoint")).fetchone()
        limit = await (await store._db.execute("PRAGMA journal_size_limit")).fetchone()
        assert (pages[0] * 4096, limit[0]) == (want, want)


async def test_migrates_a_version_1_database_keeping_its_events(open_store, tmp_path):
    path = tmp_path / "hub.db"
    con = sqlite3.connect(path)
    con.executescript(_MIGRATIONS[0])
    con.execute("PRAGMA user_version=1")
    con.execute(
        "INSERT INTO events (mid, eid, ets, received_at, source, raw) VALUES ('old', 'LOG', 1, 1, 'api', x'7b7d')"
    )
    con.commit()
    con.close()
    store = await open_store(path)
    assert _one(store, "PRAGMA user_version") == SCHEMA_VERSION
    assert _rows(store, "SELECT mid, raw FROM stored_events") == [("old", b"{}")]
    assert store.stats.backlog == 1
    r = await store.add(Checked(events=[_event("old"), _event("new")]), source="test")
    assert (r.new, r.duplicates) == (1, 1)


async def test_migrates_a_version_2_database_keeping_bytes_batches_and_deliveries(open_store, tmp_path):
    path = tmp_path / "hub.db"
    con = sqlite3.connect(path)
    con.executescript(_MIGRATIONS[0] + ";" + _MIGRATIONS[1])
    con.execute("PRAGMA user_version=2")
    con.execute("INSERT INTO batches (id, msgid, events, created_at) VALUES (7, 'm-7', 1, 1)")
    con.executemany(
        "INSERT INTO events (seq, mid, eid, ets, channel, pdata_id, received_at, source, raw, batch_id, delivered_at)"
        " VALUES (?, ?, 'LOG', 1, 'ch', 'app', 1, 'api', ?, ?, ?)",
        [
            (1, "sent", b'{"a":1}', None, 5),
            (2, "in-flight", b'{"b":2}', 7, None),
            (4, "waiting", b'{"c":3}', None, None),
        ],
    )
    con.commit()
    con.close()
    store = await open_store(path)
    assert _rows(store, "SELECT seq, mid, raw, batch_id, delivered_at FROM stored_events ORDER BY seq") == [
        (1, "sent", b'{"a":1}', None, 5),
        (2, "in-flight", b'{"b":2}', 7, None),
        (4, "waiting", b'{"c":3}', None, None),
    ]
    assert _rows(store, "SELECT name FROM pragma_table_info('events') WHERE name = 'raw'") == []
    assert (store.stats.backlog, store.stats.stored_total) == (2, 4)
    # The unfinished batch is resumed with its msgid, then the waiting event gets a batch of its own.
    taken = await store.take_batch(10, 10_000)
    assert (taken.batch.msgid, [r[1:] for r in taken.rows]) == ("m-7", [("in-flight", b'{"b":2}')])
    r = await store.add(Checked(events=[_event("waiting"), _event("new")]), source="test")
    assert (r.new, r.duplicates) == (1, 1)
    # Every event row has its bytes and no bytes are left without a row (the duplicate stored none).
    assert _rows(
        store,
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_raw),"
        " (SELECT count(*) FROM stored_events WHERE mid = 'new')",
    ) == [(4, 4, 1)]


async def test_requests_sharing_a_commit_get_their_own_duplicate_counts(store):
    await store.add(Checked(events=[_event("old")]), source="test")
    commits = store.stats.commits
    # 100 rows in all: insert statements of 64 rows cross from one request into the next.
    first = [_event(f"a{i}") for i in range(50)]
    second = [_event("a10"), _event("old"), *(_event(f"b{i}") for i in range(46)), _event("b3"), _event("a49")]
    r1, r2 = await asyncio.gather(
        store.add(Checked(events=first), source="test"), store.add(Checked(events=second), source="test")
    )
    assert store.stats.commits == commits + 1  # one group commit
    assert ((r1.new, r1.duplicates), (r2.new, r2.duplicates)) == ((50, 0), (46, 4))
    rows = _rows(store, "SELECT mid, raw FROM stored_events ORDER BY seq")
    assert [m for m, _ in rows] == ["old", *(f"a{i}" for i in range(50)), *(f"b{i}" for i in range(46))]
    assert all(raw == b'{"mid":"%s"}' % m.encode() for m, raw in rows)
    assert (store.stats.stored_total, store.stats.duplicates) == (97, 4)


def _store_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


@pytest.mark.slow
async def test_upgrading_a_version_2_store_hands_the_space_of_the_copy_back(open_store, tmp_path):
    path = tmp_path / "hub.db"
    before = version_2_store(path, 4000)
    store = await open_store(path)
    assert _one(store, "PRAGMA user_version") == SCHEMA_VERSION
    assert _rows(store, "SELECT count(*), sum(length(raw)) FROM stored_events") == [(4000, 4000 * 1000)]
    assert _one(store, "PRAGMA freelist_count") == 0
    # The rebuild wrote every event twice over; without handing the pages back the file stays ~2x.
    assert _store_bytes(path) < 1.2 * before, (_store_bytes(path), before)


async def test_counters_survive_a_restart(open_store):
    for round_ in range(2):
        store = await open_store()
        await store.add(Checked(events=[_event("a"), _event("b")]), source="test")
        assert store.stats.duplicates == 2 * round_
        assert store.stats.backlog == 2
        await store.close()  # a restart: the next round opens the same file afresh


async def test_writes_after_close_are_refused_not_lost(store):
    await store.close()
    try:
        await store.add(Checked(events=[_event("late")]), source="test")
    except Exception as exc:
        assert "shutting down" in str(exc)
    else:
        raise AssertionError("a write after close was accepted")


async def test_retention_forgets_quarantine_too(store):
    """What is kept of junk is bounded in time as well as in size: quarantine follows store.retention_days."""
    from hub.telemetry import Quarantined

    junk = [Quarantined(i, "event has no 'mid' string", b'{"eid":"LOG"}', None) for i in range(3)]
    r = await store.add(Checked(events=[_event("kept")], quarantined=junk), source="test")
    assert (r.new, r.quarantined) == (1, 3) and store.stats.quarantined == 3
    assert await store.prune(retention_s=3600) == 0 and store.stats.quarantined == 3  # not old yet
    await asyncio.sleep(0.01)
    await store.prune(retention_s=0)
    assert store.stats.quarantined == 0 and _one(store, "SELECT count(*) FROM quarantine") == 0
    assert _one(store, "SELECT count(*) FROM events") == 1  # undelivered events are never pruned
