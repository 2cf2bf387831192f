"""Receipts: what became of each of a device's events, by mid, in one round trip to the reader.

Every lookup is a seek in a unique or partial index on `mid` (events, dead_letter, and quarantine
since schema v5), so the cost grows with the mids asked, not with the store's size.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosqlite

__all__ = ["Receipt", "lookup"]

# "event 12 has no 'mid' string" is reported as "event has no 'mid' string": the index in that request means
# nothing to a device asking later (the same rule as the status page's top reasons).
_QUARANTINE_REASON = (
    "CASE WHEN reason GLOB 'event [0-9]* *' "
    "THEN 'event ' || substr(reason, 7 + instr(substr(reason, 7), ' ')) ELSE reason END"
)


@dataclass(slots=True)
class Receipt:
    """Each asked mid in exactly one list, in the order asked (repeats answered once)."""

    delivered: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (mid, reason)
    dead_letter: list[tuple[str, str]] = field(default_factory=list)  # (mid, upstream's reason)
    unknown: list[str] = field(default_factory=list)


def _look(conn: sqlite3.Connection, mids: Sequence[str]) -> Receipt:
    """Stored events first (delivered or waiting), then dead letters, then quarantine; else unknown.

    An event can be in more than one table (quarantined once, stored when it was sent again; a dead letter
    resent by the device): what the hub stores and forwards wins, then upstream's refusal, then quarantine.
    """
    asked = json.dumps(list(mids))
    conn.execute("BEGIN")  # one snapshot: an event moving between tables meanwhile is seen once, not lost
    try:
        return _classify(conn, mids, asked)
    finally:
        conn.execute("COMMIT")


def _classify(conn: sqlite3.Connection, mids: Sequence[str], asked: str) -> Receipt:
    stored = dict(
        conn.execute(
            "SELECT mid, delivered_at IS NOT NULL FROM events WHERE mid IN (SELECT value FROM json_each(?))", (asked,)
        ).fetchall()
    )
    dead = dict(
        conn.execute(
            "SELECT mid, reason FROM dead_letter WHERE mid IN (SELECT value FROM json_each(?))", (asked,)
        ).fetchall()
    )
    # The newest quarantine row of each mid (a device may have sent the same broken event twice).
    junk = dict(
        conn.execute(
            f"SELECT mid, {_QUARANTINE_REASON} FROM quarantine INDEXED BY quarantine_mid"
            " WHERE mid IN (SELECT value FROM json_each(?)) ORDER BY id",
            (asked,),
        ).fetchall()
    )
    out = Receipt()
    for mid in dict.fromkeys(mids):
        if mid in stored:
            (out.delivered if stored[mid] else out.waiting).append(mid)
        elif mid in dead:
            out.dead_letter.append((mid, str(dead[mid])))
        elif mid in junk:
            out.quarantined.append((mid, str(junk[mid])))
        else:
            out.unknown.append(mid)
    return out


async def lookup(conn: aiosqlite.Connection, mids: Sequence[str]) -> Receipt:
    """The receipt for `mids`, read on `conn` (the store's reader) in one call on its thread."""
    result: Receipt = await conn._execute(_look, conn._conn, mids)
    return result
