"""The Store: one writer task that group-commits everything queued, and the reader for named queries.

What "stored" means here is the hub's promise to devices: `add()` returns only after the
transaction holding the request's events has committed with `synchronous=FULL` in WAL mode, so
the events survive `kill -9` and a power cut from then on. Nothing is ever acknowledged before.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ..config import StoreConfig
from ..errors import StoreClosed, StoreFull, StoreUnavailable
from ..telemetry import Checked
from . import delivery
from .connection import open_reader, open_writer
from .delivery import Taken
from .failures import FailureLog, WriteFailures, describe, is_storage_failure
from .migrations import SCHEMA_VERSION, migrate
from .queries import Queries
from .space import Space
from .stats import AddResult, StoreStats
from .writes import (
    LedgerRow,
    RequestPlan,
    add_counters,
    apply_group,
    bare,
    in_transaction,
    record_delivery,
    request_rows,
)

__all__ = ["AddResult", "Store", "StoreStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A group commit takes at most this many requests; more wait for the next commit.
_MAX_GROUP_REQUESTS = 256
# How often the disk and file sizes are re-read for the cap check (seconds).
_SPACE_CHECK_INTERVAL_S = 1.0
# Every this many space checks the figures are recounted anyway (besides on another process's commit).
_RECOUNT_EVERY = 30
# Retention deletes this many delivered events per transaction.
_PRUNE_CHUNK = 5000
# The chart keeps a week and a day of hourly counts.
_HOURLY_KEEP_H = 24 * 8


@dataclass
class _Pending:
    checked: Checked
    source: str
    device: str | None
    future: asyncio.Future[AddResult]
    size: int
    ledger: LedgerRow | None = None


# A job for the writer's thread, run inside a transaction or (False) outside one, and its answer.
_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", bool]
_STOP = object()


class Store:
    """Durable store: a single writer task commits everything queued in one transaction."""

    def __init__(self, path: Path, cfg: StoreConfig) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.stats = StoreStats()
        self.space = Space(self.path, cfg, self.stats)
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._space_task: asyncio.Task[None] | None = None
        self._closing = False
        self._listeners: list[Callable[[], None]] = []
        self._commit_hooks: list[Callable[[float, int], None]] = []
        self._data_version: int | None = None  # the file's data_version when last looked at
        # Failed writes and measurements are logged once per cause, not once per request or tick.
        self._failures = WriteFailures(self.path, self.stats, log)
        self._measure_failures = FailureLog(log, "store measurement")
        # Named read-only queries (counters, devices, reasons, the import ledger...) for everyone else.
        self.read = Queries(self._read_conn)

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating or migrating) the database and start the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await open_writer(self.path, self.cfg.max_bytes)
        await migrate(self._db, self.path, self.space.measure)
        self._reader = await open_reader(self.path)
        await self._load_stats()
        await self._written_elsewhere()  # the baseline: commits by others from now on are noticed
        await self.space.refresh()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._space_task = asyncio.create_task(self._space_loop(), name="store-space")
        log.info(
            "store open: %s (schema v%d, %d events waiting for upstream)", self.path, SCHEMA_VERSION, self.stats.backlog
        )

    async def close(self) -> None:
        """Finish every queued write, then close the database."""
        if self._closing:
            return
        self._closing = True
        if self._space_task:
            self._space_task.cancel()
        if self._writer:
            await self._queue.put(_STOP)
            await self._writer
        for conn in (self._reader, self._db):
            if conn is not None:
                await conn.close()
        self._db = self._reader = None
        log.info("store closed: %s", self.path)

    async def _load_stats(self) -> None:
        s = self.stats
        named = await self.read.counters()
        s.backlog = await self.read.backlog()
        s.stored_total = named.get("stored", 0)
        s.quarantined = await self.read.quarantined()
        s.duplicates = named.get("duplicates", 0)
        s.delivered = named.get("delivered", 0)
        s.dead_letters = await self.read.dead_letter_count()

    async def recount(self) -> None:
        """Re-read the figures another process may have changed (e.g. `import --data-dir`), and wake the
        forwarder when the backlog grew."""
        before = self.stats.backlog
        named = await self.read.counters()
        self.stats.backlog = await self.read.backlog()
        self.stats.dead_letters = await self.read.dead_letter_count()
        self.stats.quarantined = await self.read.quarantined()
        self.stats.stored_total = named.get("stored", self.stats.stored_total)
        self.stats.duplicates = named.get("duplicates", self.stats.duplicates)
        if self.stats.backlog > before:
            for cb in self._listeners:
                cb()

    async def _written_elsewhere(self) -> bool:
        """Whether another process committed since the last look: the writer connection's data_version
        moves only for other connections' commits (the PRAGMA runs between the writer's jobs)."""
        version = await self.read.data_version(self._db) if self._db is not None else None
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        return changed

    # ---- space -----------------------------------------------------------------------------

    async def _space_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(_SPACE_CHECK_INTERVAL_S)
            ticks += 1
            try:
                await self.space.refresh()
                if self.stats.full_reason and await self._make_room():
                    await self.space.refresh()
                if ticks % _RECOUNT_EVERY == 0 or await self._written_elsewhere():
                    await self.recount()
                await self.refresh_oldest()
            except (OSError, sqlite3.Error, StoreFull, StoreUnavailable, StoreClosed) as exc:
                self._measure_failures.failed(
                    describe(exc, self.path)[0],
                    f"{self.path}: {exc}; the figures on the status page may be stale",
                    level=logging.WARNING,
                )
            else:
                self._measure_failures.worked()

    async def refresh_oldest(self) -> None:
        """Re-read the oldest waiting event and since when it is the oldest: one index seek (events_pending);
        /health, the status page and metrics then read memory only."""
        self.stats.note_oldest(await self.read.oldest_waiting(), time.time())

    async def _make_room(self) -> int:
        """When full, delete delivered events early (upstream has them; never undelivered ones): taking new
        telemetry matters more than retention's re-export window. Returns how many were deleted."""
        if not await self.read.any_delivered() and not self.stats.quarantined:
            return 0
        n = await self.prune(0)
        if n:
            log.warning("store full: deleted %d delivered events before store.retention_days to make room", n)
        return n

    def space_problem(self, incoming: int = 0) -> str | None:
        """Why new data cannot be taken now (cap or free-space floor), or None."""
        return self.space.problem(incoming)

    def check_space(self, incoming: int = 0) -> None:
        """Raise StoreFull when the cap or the free-space floor would be crossed."""
        problem = self.space.problem(incoming)
        if problem:
            raise StoreFull(problem)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call back (on the loop) after each commit that stored new events; wakes the forwarder."""
        self._listeners.append(callback)

    def on_group_commit(self, hook: Callable[[float, int], None]) -> None:
        """Call hook(seconds, events) after every group commit (metrics)."""
        self._commit_hooks.append(hook)

    # ---- writing ---------------------------------------------------------------------------

    async def add(
        self, checked: Checked, *, source: str, device: str | None = None, ledger: LedgerRow | None = None
    ) -> AddResult:
        """Queue one request's events; return once the commit that holds them has returned.

        `ledger` (an imported file's row) is committed in the same transaction as its events.
        """
        if self._closing or self._writer is None:
            raise StoreClosed("the hub is shutting down; retry in a moment")
        keep = self.cfg.quarantine_keep_bytes
        size = sum(len(e.raw) for e in checked.events) + sum(min(len(q.raw), keep) for q in checked.quarantined)
        self.check_space(size)
        self.space.pending_bytes += size
        fut: asyncio.Future[AddResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(checked, source, device, fut, size, ledger))
        return await fut

    async def _write(self, job: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run job(conn) on the writer's thread, in queue order, in its own transaction.

        transaction=False is for the few statements SQLite refuses inside one (incremental vacuum,
        checkpoints); they still go through the writer, so they never interleave with a commit.
        """
        if self._writer is None or self._writer.done():
            raise StoreClosed("the store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, fut, transaction))
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
            jobs: list[_Job] = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Pending):
                    group.append(item)
                else:
                    jobs.append(item)
            if group:
                await self._commit_group(group)
            for job, fut, transaction in jobs:
                await self._run_job(job, fut, transaction)
        # Anything queued after the stop marker is refused, not dropped silently.
        while not self._queue.empty():
            item = self._queue.get_nowait()
            fut = item.future if isinstance(item, _Pending) else item[1]
            if not fut.done():
                fut.set_exception(StoreClosed("the hub is shutting down; retry in a moment"))

    async def _run_job(
        self, job: Callable[[sqlite3.Connection], Any], fut: asyncio.Future[Any], transaction: bool
    ) -> None:
        try:
            # The whole job runs on the writer's thread: one round trip, not one per statement.
            result = await self._in_writer_thread(in_transaction if transaction else bare, job)
        except BaseException as exc:  # the job's caller gets the error; the writer lives on
            if not fut.done():
                fut.set_exception(self._failures.translate(exc))
            if not isinstance(exc, Exception):
                raise
        else:
            self._failures.worked()
            if not fut.done():
                fut.set_result(result)

    async def _in_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) on aiosqlite's own thread in one round trip.

        aiosqlite has no public call for this; without it a group commit costs a thread hop per
        statement (measured: one per request plus five), which is what limited ingest. Safe because
        the connection is only ever used from that thread, and only by the writer task.
        """
        db = self._db
        assert db is not None
        result: T = await db._execute(fn, db._conn, *args)
        return result

    async def _commit_group(self, group: list[_Pending]) -> None:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        devices: dict[str, int] = {}
        warnings: dict[str, int] = {}
        unchecked = 0
        plan: list[RequestPlan] = []
        try:
            for p in group:
                rows, raws, quarantine = request_rows(
                    p.checked, p.source, p.device, now_ms, self.cfg.quarantine_keep_bytes
                )
                for row in rows:
                    if row[1]:
                        devices[row[1]] = devices.get(row[1], 0) + 1
                for k, v in p.checked.warnings.items():
                    warnings[k] = warnings.get(k, 0) + v
                unchecked += p.checked.unchecked
                plan.append((rows, raws, quarantine, p.ledger))
            news = await self._in_writer_thread(apply_group, plan, devices, now_ms)
        except BaseException as exc:
            if len(group) > 1 and isinstance(exc, Exception) and not is_storage_failure(exc):
                # Something in one request broke the commit (a bug, odd data): commit each request on its
                # own, so the others are not refused along with it. Nothing of the group was committed.
                log.error(
                    "store commit of %d requests failed (%s: %s); committing them one by one",
                    len(group),
                    type(exc).__name__,
                    exc,
                )
                for p in group:
                    await self._commit_group([p])
                return
            err = self._failures.refusal(exc)  # logged once per cause, not once per commit
            for p in group:
                self.space.pending_bytes -= p.size
                if not p.future.done():
                    p.future.set_exception(err)
            if not isinstance(exc, Exception):
                raise
            log.debug("store commit failed, %d requests refused (nothing acknowledged): %s", len(group), exc)
            return
        self._failures.worked()
        results = [AddResult(new, len(rows) - new, len(q)) for new, (rows, _, q, _) in zip(news, plan, strict=True)]
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
        for p, r in zip(group, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)
        for hook in self._commit_hooks:
            hook(elapsed, total_new + total_dup + total_q)
        if total_new:
            for cb in self._listeners:
                cb()

    # ---- upstream delivery -----------------------------------------------------------------

    async def take_batch(
        self,
        max_events: int,
        max_bytes: int,
        exclude: Collection[int] = (),
        delivered: Sequence[int] = (),
        counters: Mapping[str, int] | None = None,
    ) -> Taken:
        """The next batch and its (seq, mid, raw) rows: an unfinished one (same msgid), else a new one.

        Its msgid is committed before it is sent, so every retry, even after a crash, reuses it; one
        channel and producer, oldest first, within both limits; `exclude` (in flight) is left alone.
        `delivered` batches (just acknowledged) and `counters` commit in the same transaction.
        """
        now = int(time.time() * 1000)
        taken = await self._write(
            partial(
                delivery.take,
                max_events=max_events,
                max_bytes=max_bytes,
                skip=tuple(exclude),
                delivered=delivered,
                counters=counters or {},
                now=now,
            )
        )
        self.stats.backlog -= taken.delivered
        self.stats.delivered += taken.delivered
        return taken

    async def mark_delivered(self, batch_id: int) -> int:
        """Record upstream's 2xx for a batch (committed before anything else happens); return the count."""
        now = int(time.time() * 1000)
        n = await self._write(partial(record_delivery, batch_id=batch_id, now=now))
        self.stats.backlog -= n
        self.stats.delivered += n
        return n

    async def note_attempt(self, batch_id: int, error: str | None, counters: Mapping[str, int] | None = None) -> None:
        """Count a failed attempt on a batch and keep upstream's last answer with it (and add `counters`)."""
        await self._write(partial(delivery.note_attempt, batch_id=batch_id, error=error, counters=counters or {}))

    async def split_batch(self, batch_id: int, keep: int) -> None:
        """Keep the first `keep` events in the batch; the rest go into a new batch with its own msgid."""
        await self._write(partial(delivery.split, batch_id=batch_id, keep=keep))

    async def release_tail(self, batch_id: int, keep: int) -> None:
        """Shrink a batch to its first `keep` events; the rest go back to the queue (after a 413)."""
        await self._write(partial(delivery.release_tail, batch_id=batch_id, keep=keep))

    async def dead_letter(self, batch_id: int, reason: str) -> int:
        """Move a batch's events (upstream refused them) to the dead-letter table, with the reason."""
        now = int(time.time() * 1000)
        n = await self._write(partial(delivery.dead_letter, batch_id=batch_id, reason=reason, now=now))
        self.stats.backlog -= n
        self.stats.dead_letters += n
        return n

    async def requeue_dead(self, mids: Sequence[str] | None = None) -> int:
        """Put dead letters back in the queue (all, or the given mids); returns how many."""
        n = await self._write(partial(delivery.requeue_dead, mids=mids))
        self.stats.backlog += n
        self.stats.dead_letters = await self.read.dead_letter_count()
        for cb in self._listeners:
            cb()
        return n

    async def prune(self, retention_s: float) -> int:
        """Delete delivered events and quarantine (junk is bounded in time too) older than the retention
        period, and give the pages back; at the cap (`_make_room`, retention 0) quarantine goes first."""
        cutoff = int((time.time() - retention_s) * 1000)
        junk = await self._write(partial(delivery.prune_quarantine, cutoff_ms=cutoff))
        self.stats.quarantined = max(0, self.stats.quarantined - junk)
        total, n = 0, _PRUNE_CHUNK
        while n == _PRUNE_CHUNK:  # a chunk per transaction, until one comes back short
            n = await self._write(partial(delivery.prune_delivered, cutoff_ms=cutoff, chunk=_PRUNE_CHUNK))
            total += n
        if total or junk:
            await self._write(partial(delivery.prune_hourly, before_hour=int(time.time()) // 3600 - _HOURLY_KEEP_H))
            await self._write(delivery.shrink, transaction=False)
            days = retention_s / 86400
            log.info("retention: deleted %d delivered and %d quarantined events over %.1f days old", total, junk, days)
        return total

    # ---- counters --------------------------------------------------------------------------

    async def add_counters(self, counters: Mapping[str, int]) -> None:
        """Add to named counters in a commit of their own."""
        await self._write(partial(add_counters, counters=counters))

    async def drop_counters(self, prefix: str, keep: str) -> None:
        """Forget counters named prefix* except `keep` (yesterday's upload bytes, say)."""
        await self._write(partial(delivery.drop_counters, prefix=prefix, keep=keep))

    # ---- imports ---------------------------------------------------------------------------

    async def update_import_report(self, sha256: str, imported_ms: int, report: str) -> None:
        """Put an import's final counts into its ledger row."""
        await self._write(partial(delivery.update_import_report, sha256=sha256, imported_ms=imported_ms, report=report))

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreClosed("the store is closed")
        return self._reader

    # ---- health ----------------------------------------------------------------------------

    def writer_alive(self) -> bool:
        """Whether the writer task is running (a dead writer means nothing can be acknowledged)."""
        return self._writer is not None and not self._writer.done()

    async def writable(self) -> bool:
        """Whether a write transaction can be taken right now (for /health)."""
        if self._writer is None or self._writer.done():
            return False
        try:
            return await asyncio.wait_for(self._write(delivery.health_probe), timeout=5.0)
        except (TimeoutError, Exception):
            return False
