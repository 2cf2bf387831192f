"""One device's story, for branch IT: what the hub knows of one tablet, from its id (or a prefix of it).

Every figure is read through the per-device indexes of schema v6 (events_did, quarantine_did), in one
snapshot on the store's reader, so the page and the CLI never scan the whole store for one device.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import aiosqlite

__all__ = ["DeviceStory", "find", "story"]

# The same reason rule as the status page's: "event 12 has no 'eid' string" counts as "event has no ...".
_QUARANTINE_REASON = (
    "CASE WHEN reason GLOB 'event [0-9]* *' "
    "THEN 'event ' || substr(reason, 7 + instr(substr(reason, 7), ' ')) ELSE reason END"
)
_ADDRESSES = 5


@dataclass(slots=True)
class DeviceStory:
    """What became of one device's telemetry (times epoch ms; counts of events unless named)."""

    did: str
    first_seen: int
    last_seen: int
    requests: int  # requests with its events, counted since schema v6
    received: int  # events it sent (duplicates included)
    duplicates: int  # events it sent again (counted since schema v6)
    stored: int  # its events kept on the hub now (delivered and kept for store.retention_days, or waiting)
    delivered: int  # of those, delivered upstream
    last_delivered_at: int | None
    waiting: int
    dead_letters: int
    quarantined: list[tuple[str, int]] = field(default_factory=list)  # (reason, count), commonest first
    addresses: list[tuple[str, int]] = field(default_factory=list)  # (address, last seen ms), newest first
    per_day: list[tuple[int, int]] = field(default_factory=list)  # (day start ms UTC, events received)


def _story(conn: sqlite3.Connection, did: str, days: int, now_ms: int) -> DeviceStory | None:
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            "SELECT first_seen, last_seen, requests, events, duplicates FROM devices WHERE did = ?", (did,)
        ).fetchone()
        if row is None:
            return None
        stored, delivered, last_at = conn.execute(
            "SELECT count(*), count(delivered_at), max(delivered_at) FROM events INDEXED BY events_did WHERE did = ?",
            (did,),
        ).fetchone()
        dead = conn.execute("SELECT count(*) FROM dead_letter WHERE did = ?", (did,)).fetchone()[0]
        junk = conn.execute(
            f"SELECT {_QUARANTINE_REASON} AS r, count(*) AS n FROM quarantine INDEXED BY quarantine_did"
            " WHERE did = ? GROUP BY r ORDER BY n DESC, r",
            (did,),
        ).fetchall()
        first_day = (now_ms // 86_400_000 - days + 1) * 86_400_000
        # Sources are "api:<address>" or an import's; the newest ones, from the newest events.
        addresses = conn.execute(
            "SELECT source, max(received_at) AS at FROM events INDEXED BY events_did"
            " WHERE did = ? AND received_at >= ? GROUP BY source ORDER BY at DESC LIMIT ?",
            (did, first_day, _ADDRESSES),
        ).fetchall()
        counted = dict(
            conn.execute(
                "SELECT received_at / 86400000, count(*) FROM events INDEXED BY events_did"
                " WHERE did = ? AND received_at >= ? GROUP BY 1",
                (did, first_day),
            ).fetchall()
        )
    finally:
        conn.execute("COMMIT")
    today = now_ms // 86_400_000
    return DeviceStory(
        did=did,
        first_seen=int(row[0]),
        last_seen=int(row[1]),
        requests=int(row[2]),
        received=int(row[3]),
        duplicates=int(row[4]),
        stored=int(stored),
        delivered=int(delivered),
        last_delivered_at=int(last_at) if last_at is not None else None,
        waiting=int(stored) - int(delivered),
        dead_letters=int(dead),
        quarantined=[(str(r), int(n)) for r, n in junk],
        addresses=[(str(s).removeprefix("api:"), int(at)) for s, at in addresses],
        per_day=[(d * 86_400_000, int(counted.get(d, 0))) for d in range(today - days + 1, today + 1)],
    )


async def story(conn: aiosqlite.Connection, did: str, days: int, now_ms: int) -> DeviceStory | None:
    """The story of device `did` (None if the hub never stored an event of it), with `days` days of counts."""
    result: DeviceStory | None = await conn._execute(_story, conn._conn, did, days, now_ms)
    return result


async def find(conn: aiosqlite.Connection, prefix: str, limit: int) -> list[tuple[str, int]]:
    """(did, last seen ms) of the devices whose id starts with `prefix` (the primary key's order), newest first."""
    upper = prefix + "\U0010ffff"
    rows = await conn.execute_fetchall(
        "SELECT did, last_seen FROM devices WHERE did >= ? AND did < ? ORDER BY last_seen DESC LIMIT ?",
        (prefix, upper, limit),
    )
    return [(str(d), int(t)) for d, t in rows]
