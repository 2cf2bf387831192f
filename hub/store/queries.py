"""Named read-only queries: what the status page, metrics, admin paths and imports may ask the store.

They run on the store's reader connection (WAL: a reader never blocks the writer), each in one
round trip to the reader's thread. Callers get plain values, never SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from . import devices
from .receipts import Receipt, lookup

# "event 12 has no 'mid' string" and "event 3 has no 'mid' string" are one reason: the index is dropped.
_QUARANTINE_REASON = (
    "CASE WHEN reason GLOB 'event [0-9]* *' "
    "THEN 'event ' || substr(reason, 7 + instr(substr(reason, 7), ' ')) ELSE reason END"
)


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A device as the status page lists it (times in epoch ms)."""

    did: str
    first_seen: int
    last_seen: int
    events: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event upstream refused, with upstream's reason."""

    mid: str
    eid: str
    did: str | None
    reason: str
    failed_at: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One file in the import ledger; `report` is the import report as stored (JSON text)."""

    sha256: str
    name: str
    imported_at: int
    format: str
    report: str


class Queries:
    """The store's read side, bound to its reader connection (opened and closed by the Store)."""

    def __init__(self, conn: Callable[[], aiosqlite.Connection]) -> None:
        self._conn = conn

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._conn().execute_fetchall(sql, params))

    async def _int(self, sql: str, params: Sequence[Any] = ()) -> int:
        rows = await self._rows(sql, params)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def counters(self) -> dict[str, int]:
        """Every named counter."""
        return {str(name): int(value) for name, value in await self._rows("SELECT name, value FROM counters")}

    async def counter(self, name: str) -> int:
        """One named counter (0 if never counted)."""
        return await self._int("SELECT value FROM counters WHERE name = ?", (name,))

    async def backlog(self) -> int:
        """Events not yet delivered upstream, counted from the table."""
        return await self._int("SELECT count(*) FROM events WHERE delivered_at IS NULL")

    async def oldest_waiting(self) -> tuple[int, int] | None:
        """(seq, received_at ms) of the oldest event waiting for upstream, or None.

        Seqs grow with arrival, so the smallest pending seq is the oldest received: one seek in the
        events_pending index, never a scan of the backlog.
        """
        rows = await self._rows(
            "SELECT seq, received_at FROM events INDEXED BY events_pending WHERE delivered_at IS NULL ORDER BY seq LIMIT 1"
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    async def quarantined(self) -> int:
        """Events kept aside as malformed."""
        return await self._int("SELECT count(*) FROM quarantine")

    async def dead_letter_count(self) -> int:
        """Events upstream refused."""
        return await self._int("SELECT count(*) FROM dead_letter")

    async def any_delivered(self) -> bool:
        """Whether any delivered event is still kept (so pruning early can make room)."""
        return bool(
            await self._int(
                "SELECT EXISTS (SELECT 1 FROM events INDEXED BY events_delivered WHERE delivered_at IS NOT NULL)"
            )
        )

    async def last_delivery_ms(self) -> int:
        """When the newest kept delivered event was delivered (epoch ms; 0 if none is kept)."""
        return await self._int("SELECT max(delivered_at) FROM events WHERE delivered_at IS NOT NULL")

    async def hourly(self, first_hour: int, last_hour: int) -> list[tuple[int, str, int]]:
        """(hour, kind, n) for hours first_hour..last_hour (hours since the epoch), kinds received / delivered."""
        rows = await self._rows(
            "SELECT hour, kind, n FROM hourly WHERE hour >= ? AND hour <= ?", (first_hour, last_hour)
        )
        return [(int(h), str(k), int(n)) for h, k, n in rows]

    async def recent_devices(self, limit: int) -> list[DeviceSeen]:
        """The devices that synced most recently."""
        rows = await self._rows(
            "SELECT did, first_seen, last_seen, events FROM devices ORDER BY last_seen DESC, did LIMIT ?", (limit,)
        )
        return [DeviceSeen(str(d), int(f), int(last), int(n)) for d, f, last, n in rows]

    async def device_count(self) -> int:
        """Devices ever seen."""
        return await self._int("SELECT count(*) FROM devices")

    async def devices_seen_since(self, since_ms: int) -> int:
        """Devices whose last sync was at or after since_ms (epoch ms)."""
        return await self._int("SELECT count(*) FROM devices WHERE last_seen >= ?", (since_ms,))

    async def newest_channel(self) -> str:
        """The context.channel of the newest stored event that has one ("" if none): the branch's channel."""
        rows = await self._rows(
            "SELECT channel FROM events WHERE channel IS NOT NULL AND channel != '' ORDER BY seq DESC LIMIT 1"
        )
        return str(rows[0][0]) if rows else ""

    async def top_reasons(self, kind: str, limit: int) -> list[tuple[str, int]]:
        """The commonest reasons events were quarantined (kind "quarantine") or refused ("dead_letter")."""
        if kind == "quarantine":
            sql = (
                f"SELECT {_QUARANTINE_REASON} AS r, count(*) AS n FROM quarantine GROUP BY r ORDER BY n DESC, r LIMIT ?"
            )
        elif kind == "dead_letter":
            sql = "SELECT reason AS r, count(*) AS n FROM dead_letter GROUP BY r ORDER BY n DESC, r LIMIT ?"
        else:
            raise ValueError(f"no reasons are kept for {kind!r}")
        return [(str(r), int(n)) for r, n in await self._rows(sql, (limit,))]

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """The newest dead letters."""
        rows = await self._rows(
            "SELECT mid, eid, did, reason, failed_at FROM dead_letter ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [DeadLetter(str(m), str(e), d, str(r), int(f)) for m, e, d, r, f in rows]

    async def dead_letter_mids(self, mids: Sequence[str]) -> set[str]:
        """Which of these mids are dead letters now."""
        found: set[str] = set()
        unique = sorted(set(mids))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            found.update(
                str(m) for (m,) in await self._rows(f"SELECT mid FROM dead_letter WHERE mid IN ({marks})", part)
            )
        return found

    async def find_import(self, sha256: str) -> LedgerEntry | None:
        """The ledger row of a file with this content, if it was imported before."""
        rows = await self._rows(
            "SELECT sha256, name, imported_at, format, report FROM imports WHERE sha256 = ?", (sha256,)
        )
        return LedgerEntry(*rows[0]) if rows else None

    async def import_ledger(self, limit: int) -> list[LedgerEntry]:
        """The import ledger, newest first."""
        rows = await self._rows(
            "SELECT sha256, name, imported_at, format, report FROM imports"
            " ORDER BY imported_at DESC, rowid DESC LIMIT ?",
            (limit,),
        )
        return [LedgerEntry(*r) for r in rows]

    async def receipts(self, mids: Sequence[str]) -> Receipt:
        """What became of each of these mids: delivered, waiting, quarantined, dead-lettered or unknown."""
        return await lookup(self._conn(), mids)

    async def device_story(self, did: str, days: int, now_ms: int) -> devices.DeviceStory | None:
        """One device's story (see store.devices), or None if no event of it was ever stored."""
        return await devices.story(self._conn(), did, days, now_ms)

    async def find_devices(self, prefix: str, limit: int) -> list[tuple[str, int]]:
        """(did, last seen ms) of devices whose id starts with `prefix`, most recent first."""
        return await devices.find(self._conn(), prefix, limit)

    async def data_version(self, conn: aiosqlite.Connection) -> int:
        """SQLite's data_version on `conn`: it changes when another connection commits to the file."""
        rows = list(await conn.execute_fetchall("PRAGMA data_version"))
        return int(rows[0][0]) if rows else 0
