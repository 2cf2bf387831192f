"""Shared parts of the reliability tests: simulated devices, database and process checks.

Config files come from support.hubs.write_config, hubs from support.hubproc.HubProcess.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.events import desktop_request, js_request, make_events, mobile_request

PATH = "/api/data/v1/telemetry"
ENVELOPES = ("mobile", "js", "desktop")


def require(condition: bool, reason: str) -> None:
    """Skip when a system part is missing, saying why; under CI (CI=true) fail instead, as the README says."""
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: this test must run in CI)")
    pytest.skip(reason)


def build_request(events: list[dict[str, Any]], kind: str, did: str) -> tuple[bytes, dict[str, str]]:
    """One request as a real Sunbird client would send it (mobile gzip, JS library, desktop app)."""
    if kind == "mobile":
        return mobile_request(events, did=did)
    if kind == "js":
        return js_request(events)
    return desktop_request(events)


@dataclass
class Ledger:
    """What the simulated devices sent and what the hub acknowledged (HTTP 200)."""

    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[tuple[int, bytes]] = field(default_factory=list)  # 5xx other than 503 + Retry-After, 4xx
    latencies: list[float] = field(default_factory=list)  # seconds, 200 answers only
    ack_marks: list[tuple[Any, list[str]]] = field(default_factory=list)  # (mark() at the ack, mids)
    errors: int = 0  # connection errors (hub killed, restarting)
    batches: list[list[str]] = field(default_factory=list)  # every batch's mids, acked or not
    resent: int = 0  # acknowledged batches sent once more (a lost ack), so the hub's dedup is exercised

    def half_stored(self, stored: set[str]) -> list[list[str]]:
        """Batches of which some but not all events are stored (a request is all or nothing)."""
        return [b for b in self.batches if 0 < len(stored.intersection(b)) < len(b)]


async def device(
    http: aiohttp.ClientSession,
    url: str,
    did: str,
    ledger: Ledger,
    stop: asyncio.Event,
    rng: random.Random,
    sizes: tuple[int, ...] = (1, 5, 20, 200),
    pause: float = 0.0,
    mark: Any = None,
    timeout: float = 30.0,
    resend: float = 0.1,
) -> None:
    """A device that syncs until `stop`: it keeps a batch until the hub answers 200, as the Sunbird app does.

    `mark`, when given, is called right after each 200 arrives; its value is kept with the acked mids
    (the power-loss test uses it to know which acks happened before which instant).
    `resend` is the share of acknowledged batches sent once more, as a device does whose ack got lost
    (or that was killed before it forgot the batch): the hub must store and forward those events once.
    """
    pending: tuple[list[str], bytes, dict[str, str]] | None = None
    again = False  # the pending batch was acknowledged already and is being sent once more
    while not stop.is_set():
        if pending is None:
            events = make_events(rng.choice(sizes), did=did)
            body, headers = build_request(events, rng.choice(ENVELOPES), did)
            mids = [e["mid"] for e in events]
            ledger.sent.update(mids)
            ledger.batches.append(mids)
            pending = (mids, body, headers)
        mids, body, headers = pending
        started = time.monotonic()
        try:
            async with http.post(
                url + PATH, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                answer = await r.read()
                status = r.status
                retry_after = r.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError):
            ledger.errors += 1  # not acknowledged: keep the batch and retry, like a device does
            await asyncio.sleep(0.05)
            continue
        ledger.statuses[status] += 1
        if status == 200:
            if mark is not None:
                ledger.ack_marks.append((mark(), mids))
            ledger.acked.update(mids)
            ledger.latencies.append(time.monotonic() - started)
            if not again and resend and rng.random() < resend:
                again = True
                ledger.resent += 1
            else:
                pending, again = None, False
        elif status == 503 and retry_after:
            await asyncio.sleep(0.05)
        else:
            ledger.unexpected.append((status, answer[:300]))
            await asyncio.sleep(0.05)
        if pause:
            await asyncio.sleep(pause)


def db_check(path: Path) -> tuple[str, set[str], int]:
    """(integrity_check result, every stored mid, undelivered count), read by an outsider's connection."""
    con = sqlite3.connect(path, timeout=30)
    try:
        integrity = ";".join(r[0] for r in con.execute("PRAGMA integrity_check"))
        mids = {m for (m,) in con.execute("SELECT mid FROM events")}
        undelivered = con.execute("SELECT count(*) FROM events WHERE delivered_at IS NULL").fetchone()[0]
    finally:
        con.close()
    return integrity, mids, undelivered


DUPLICATE_MIDS = "SELECT mid, count(*) FROM events GROUP BY mid HAVING count(*) > 1"


def duplicate_rows(db: Path | sqlite3.Connection) -> list[tuple[str, int]]:
    """Mids the store holds in more than one row (it must hold exactly one per mid), read by an outsider."""
    if isinstance(db, sqlite3.Connection):
        return db.execute(DUPLICATE_MIDS + " LIMIT 20").fetchall()
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(DUPLICATE_MIDS + " LIMIT 20").fetchall()
    finally:
        con.close()


def upstream_duplicates(fake: Any) -> str:
    """Why upstream's copy is not one per event, or "" (fake: a support.upstream.FakeUpstream).

    The same batch sent again (same msgid, same events: a lost ack, a kill -9 in flight) is a retry the
    real upstream discards; a mid that came in two different msgids, or a msgid that came back with other
    events, is a duplicate or a loss there.
    """
    foreign, changed = fake.foreign_redeliveries(), fake.changed_retries()
    problems = []
    if foreign:
        problems.append(
            f"{len(foreign)} mids reached upstream in more than one batch msgid, e.g. {dict(list(foreign.items())[:3])}"
        )
    if changed:
        problems.append(
            f"{len(changed)} msgids were sent again with other events, e.g. {dict(list(changed.items())[:2])}"
        )
    return "; ".join(problems)


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def version_2_store(path: Path, events: int) -> int:
    """A store of schema v2 made as the hub of that version made it, with ~1 KB events; returns its size.

    For the upgrade tests: it is built from the hub's own v1 and v2 migrations.
    """
    from hub.store.migrations import _MIGRATIONS

    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA auto_vacuum=INCREMENTAL")
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(_MIGRATIONS[0] + ";" + _MIGRATIONS[1] + "; PRAGMA user_version=2")
    con.execute("BEGIN")
    con.executemany(
        "INSERT INTO events (mid, eid, ets, received_at, source, raw) VALUES (?, 'LOG', 1, 1, 'api', ?)",
        [(f"m{i}", os.urandom(500).hex().encode()) for i in range(events)],
    )
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path.stat().st_size
