"""The delivery loop, written once for every sink: gates, backoff, reactions to each outcome, pipelining.

"Delivered" means the sink reported `ok` for the batch and the store has committed that fact.
An event leaves the backlog only then; a crash in between sends the batch again with the same
msgid, which upstream discards as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..config import UpstreamConfig
from ..errors import StoreClosed, StoreFull
from ..store import Batch, Store
from .schedule import backoff_delay, in_window, today
from .sink import Encoded, Outcome, Sink

__all__ = ["ForwardState", "Forwarder"]

log = logging.getLogger(__name__)

# While upstream refuses the key, how often the credentials are looked at for a fix (seconds).
_KEY_POLL_S = 2.0
_BYTES_COUNTER = "upstream_bytes:"  # + local date: bytes sent upstream that day (upstream.daily_byte_budget)
# Outcomes that keep the batch for later besides network and 5xx, and what branch IT is told about them.
_HELD = {
    "intercepted": "something other than the institute's server answers (a captive portal, a data-pack page or a "
    "proxy): nothing counts as delivered, events are kept and retried. Log in or recharge the WAN link, "
    "or use an https:// upstream",
    "moved": "redirects are not followed (the API key only goes to upstream.url); events are kept and retried",
    "error": "sending the batch failed in the hub; events are kept and retried",
}


@dataclass
class ForwardState:
    """What branch IT needs to know about delivery; read by the status page, metrics and logs."""

    enabled: bool = False
    link: str = "unknown"  # unknown | up | down | auth-failed | intercepted | moved | disabled
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_error_kind: str | None = None
    next_attempt_at: float | None = None
    delivered: int = 0
    dead_lettered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    batch_limit: int = 0  # the batch size that upstream accepts (learned from 413s)
    sent_bytes_today: int = 0
    budget_day: str = ""
    waiting_for: str | None = None  # why nothing is being sent right now, in words
    last_batch_s: float = 0.0
    restarts: int = 0  # times the delivery task ended unexpectedly and was started again


class Forwarder:
    """Delivers the store's backlog through a sink, one batch at a time, by itself, whenever it can."""

    def __init__(self, store: Store, cfg: UpstreamConfig, sink: Sink | None) -> None:
        self.store = store
        self.cfg = cfg
        self.sink = sink
        self.target = sink.describe() if sink is not None else ""
        self.state = ForwardState(enabled=sink is not None, batch_limit=cfg.batch_events)
        self.windows = cfg.windows
        self.observers: list[Callable[[str, Outcome, int, float], None]] = []
        self._wake = asyncio.Event()
        self._link_up = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._to_mark: list[Batch] = []  # answered ok, not yet recorded in the store
        self._unsaved_bytes = 0  # sent today but not yet added to the store's counter
        self._stopping = False
        self._failures = 0
        self._warned: set[str] = set()
        self._tracebacks: set[str] = set()  # causes of unexpected errors already logged with a traceback
        self._force = False
        self._next: Encoded | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is an upstream to deliver to."""
        return self.sink is not None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering (no-op without an upstream)."""
        if self.sink is None:
            self.state.link = "disabled"
            log.info("no upstream.url configured: events are kept here and not forwarded")
            return
        await self.sink.start()
        self._link_up.set()  # assume up until a request says otherwise
        # Bytes sent today survive a restart, so a crash-looping hub cannot overspend a metered link.
        day = today()
        self.state.budget_day = day
        try:
            self.state.sent_bytes_today = await self.store.read.counter(_BYTES_COUNTER + day)
            await self.store.drop_counters(_BYTES_COUNTER, keep=_BYTES_COUNTER + day)
        except (sqlite3.Error, StoreFull, StoreClosed) as exc:  # a full disk must not stop delivery starting
            log.warning("could not read or tidy today's upload byte count (%s); counting from here", exc)
        self.store.on_commit(self.wake)
        self._task = self._spawn()
        log.info("forwarding to %s (%s)", self.target, self.sink.name)

    async def stop(self, timeout: float) -> None:
        """Let the batch in flight finish (or time out), then stop; its events stay in the store."""
        self._stopping = True
        self._wake.set()
        self._link_up.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("stopping: cancelling the upstream batch in flight; its events stay queued")
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except asyncio.CancelledError:
                raise
            except BaseException:  # it ended by itself earlier (whatever it raised), and _ended logged why
                pass
        if self.sink is not None:
            await self.sink.close()

    def wake(self) -> None:
        """New events were committed: deliver now rather than after a poll interval."""
        self._wake.set()

    # ---- probing ---------------------------------------------------------------------------

    async def probe(self) -> None:
        """Cheap link check while the link is down; wakes delivery when it comes back.

        Only for `down`: a portal answers the probe too, so `intercepted` waits for a batch's acknowledgement.
        """
        if self.sink is None or self.state.link != "down":
            return
        if await self.sink.probe() and self.state.link == "down":
            log.info("upstream link is back (%s answers); delivering the backlog", self.target)
            self.state.link = "up"
            self._link_up.set()

    # ---- sync now --------------------------------------------------------------------------

    async def sync_now(self, timeout: float = 60.0) -> dict[str, Any]:
        """Deliver at once, ignoring backoff and windows; report what happened within `timeout`."""
        if self.sink is None:
            return {
                "ok": False,
                "delivered": 0,
                "backlog": self.store.stats.backlog,
                "error": "no upstream.url configured",
            }
        before = self.state.delivered
        errors_before = sum(self.state.errors.values())
        self._force = True
        self._failures = 0
        self._link_up.set()
        self._idle.clear()
        self._wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.is_set():
                break
            if sum(self.state.errors.values()) > errors_before and self.state.next_attempt_at:
                break  # a failure: report it rather than wait out the backoff
            await asyncio.sleep(0.05)
        self._force = False
        failed = sum(self.state.errors.values()) > errors_before
        return {
            "ok": not failed and self.store.stats.backlog == 0,
            "delivered": self.state.delivered - before,
            "backlog": self.store.stats.backlog,
            "link": self.state.link,
            "error": self.state.last_error if failed else None,
        }

    # ---- the loop --------------------------------------------------------------------------

    def _spawn(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(), name="forwarder")
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The delivery task ended: fine when stopping; otherwise a bug got through, so start it again."""
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or self._stopping:
            return  # only stop() or the event loop shutting down cancels it
        self.state.restarts += 1
        delay = max(1.0, self.cfg.backoff_initial) if self.state.restarts > 1 else 0.0
        log.error(
            "the delivery task ended unexpectedly (%s); restarting it (restart %d); events are kept",
            f"{type(exc).__name__}: {exc}" if exc is not None else "it returned",
            self.state.restarts,
            exc_info=exc,
        )
        asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        if self._stopping or (self._task is not None and not self._task.done()):
            return
        self._task = self._spawn()

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            with contextlib.suppress(Exception):
                await self._settle()
                if self._unsaved_bytes:
                    await self.store.add_counters(self._unsaved())

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except (StoreFull, StoreClosed, sqlite3.OperationalError) as exc:
                # The disk is full or busy: recording a delivery needs a write. Nothing is lost; wait.
                self._warn_once(
                    "store",
                    f"cannot record deliveries in the store ({exc}); delivery pauses "
                    "until the store takes writes again",
                )
                await self._sleep(max(1.0, self._backoff()))
            except Exception as exc:  # a bug must not end delivery for good: log it, back off, go on
                self._failures += 1
                self._traceback_once("forwarder error (will retry, backing off); please report this", exc)
                await self._sleep(self._backoff())

    async def _step(self) -> None:
        if not self._force:
            reason = self._gate()
            if reason:
                await self._settle()  # a batch already acknowledged is recorded now, not when the gate opens
                self.state.waiting_for = reason
                await self._sleep(60.0)
                return
        if not self._link_up.is_set():
            await self._settle()
            self.state.waiting_for = "the upstream link to come back"
            await self._wait_link()
            return
        self._wake.clear()  # before looking, so a commit landing after the look still wakes us
        if self._next is None:
            record, self._to_mark = self._to_mark, []
            self._next = await self._prepare(record=record)
        batch, self._next = self._next, None
        if batch is None:
            self.state.waiting_for = None
            self._idle.set()
            if self._stopping:
                return
            # New commits wake us; the timeout catches events added by another process (CLI import).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(5.0, self.cfg.probe_interval))
            return
        self._idle.clear()
        self.state.waiting_for = None
        await self._deliver(batch)

    def _gate(self) -> str | None:
        """Why upload must wait now (metered link), or None."""
        now = datetime.now()
        if not in_window(self.windows, now):
            return f"an upload window ({', '.join(self.cfg.upload_windows)})"
        if self.cfg.daily_byte_budget:
            day = today(now)
            if self.state.budget_day != day:
                self.state.budget_day, self.state.sent_bytes_today = day, 0
            if self.state.sent_bytes_today >= self.cfg.daily_byte_budget:
                return f"tomorrow: today's upload budget of {self.cfg.daily_byte_budget} bytes is used up"
        return None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early for shutdown or Sync now."""
        self.state.next_attempt_at = time.time() + seconds
        self._wake.clear()
        if self._stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self.state.next_attempt_at = None

    async def _wait_link(self) -> None:
        waiter = asyncio.ensure_future(self._link_up.wait())
        waker = asyncio.ensure_future(self._wake.wait())
        backoff = self._backoff()
        self.state.next_attempt_at = time.time() + backoff
        try:
            await asyncio.wait({waiter, waker}, timeout=backoff, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            waker.cancel()
            self.state.next_attempt_at = None
        self._link_up.set()  # try again (the backoff elapsed, the probe saw the link, or Sync now)

    def _backoff(self) -> float:
        return backoff_delay(self._failures, self.cfg.backoff_initial, self.cfg.backoff_max)

    async def _prepare(self, exclude: Collection[int] = (), record: Sequence[Batch] = ()) -> Encoded | None:
        """Record the last acknowledged batch, take the next one and encode it (while one is in flight).

        If this fails, `record` is recorded with the next write instead; should the hub stop before
        that, those batches stay open and are sent again with their msgids (duplicates upstream discards).
        """
        assert self.sink is not None
        limit = self.state.batch_limit
        counters = self._unsaved()
        try:
            taken = await self.store.take_batch(
                limit, self.sink.max_json_bytes, exclude, delivered=[b.id for b in record], counters=counters
            )
        except BaseException:
            # Nothing of it was committed: keep both for the next write (the batch is not sent again).
            self._unsaved_bytes += sum(counters.values())
            self._to_mark[:0] = record
            raise
        self.state.delivered += taken.delivered
        if taken.batch is None:
            return None
        batch, rows = taken.batch, taken.rows
        if not rows:
            await self.store.mark_delivered(batch.id)  # emptied before a crash: just close it
            return None
        if len(rows) > limit:
            await self.store.release_tail(batch.id, limit)
            rows = rows[:limit]
        return await self.sink.encode(batch, rows)

    async def _deliver(self, current: Encoded) -> None:
        """Send one batch while the next one is prepared and the previous one is marked delivered."""
        assert self.sink is not None
        if len(current.rows) > self.state.batch_limit:  # the limit shrank (413) after it was prepared
            await self._settle()
            await self.store.release_tail(current.batch.id, self.state.batch_limit)
            self._next = await self._prepare()
            return
        # The previous batch's ok is committed together with taking the next one, while this one is sent.
        record, self._to_mark = self._to_mark, []
        ahead = asyncio.create_task(self._prepare(exclude=[current.batch.id], record=record))
        started = time.monotonic()
        try:
            outcome, wire = await self.sink.send(current)
        finally:
            try:
                self._next = await ahead
            except Exception as exc:  # the next batch is simply prepared again on the next step
                self._traceback_once("preparing the next upstream batch failed; will retry", exc)
                self._next = None
        elapsed = time.monotonic() - started
        self.state.last_batch_s = elapsed
        self.state.sent_bytes_today += wire
        self._unsaved_bytes += wire
        for observe in self.observers:
            observe(outcome.kind, outcome, len(current.rows), elapsed)
        await self._handle(current.batch, current.rows, outcome)

    def _unsaved(self) -> dict[str, int]:
        """Bytes sent since the last save, as a counter update for the store's next write (and reset)."""
        n, self._unsaved_bytes = self._unsaved_bytes, 0
        return {_BYTES_COUNTER + today(): n} if n else {}

    async def _settle(self) -> None:
        """Record acknowledged batches now, when no next batch is taken to carry them (stop, gate, 413)."""
        while self._to_mark:
            self.state.delivered += await self.store.mark_delivered(self._to_mark[0].id)
            del self._to_mark[0]

    async def _handle(self, batch: Batch, rows: Sequence[tuple[int, str, bytes]], o: Outcome) -> None:
        s = self.state
        if o.kind == "ok":
            # Committed with the next batch's take (see _deliver), or by _settle() when there is none.
            self._to_mark.append(batch)
            s.last_success_at = time.time()
            if s.link != "up":
                log.info("upstream accepts telemetry again (link %s -> up)", s.link)
            s.link = "up"
            self._failures = 0
            self._warned.clear()
            return
        s.errors[o.kind] = s.errors.get(o.kind, 0) + 1
        s.last_error, s.last_error_at, s.last_error_kind = f"{o.kind}: {o.message}", time.time(), o.kind
        await self.store.note_attempt(batch.id, s.last_error, counters=self._unsaved())
        if o.kind == "too-large":
            if len(rows) == 1:
                n = await self.store.dead_letter(batch.id, f"upstream refuses this event as too large: {o.message}")
                s.dead_lettered += n
                log.error("upstream refused event %s as too large; moved to dead letters", rows[0][1])
                return
            s.batch_limit = max(1, len(rows) // 2)
            await self.store.release_tail(batch.id, s.batch_limit)
            log.warning(
                "upstream refused a batch of %d events as too large; sending %d per batch from now on",
                len(rows),
                s.batch_limit,
            )
            return
        if o.kind == "bad-request":
            if len(rows) == 1:
                reason = o.message if o.status is None else f"upstream answered {o.status}: {o.message}"
                n = await self.store.dead_letter(batch.id, reason)
                s.dead_lettered += n
                log.error(
                    "upstream refused event %s (%s); moved to dead letters, see `telemetry-hub dead-letter list`",
                    rows[0][1],
                    o.message,
                )
                return
            # Bisect: the halves are retried separately until the refused events stand alone.
            await self.store.split_batch(batch.id, len(rows) // 2)
            log.info(
                "upstream refused a batch of %d events (%s); splitting it to find the bad ones", len(rows), o.message
            )
            return
        if o.kind == "auth":
            s.link = "auth-failed"
            self._warn_once(
                "auth",
                f"upstream rejected the API key (HTTP {o.status}); nothing is lost. "
                "Fix the key in upstream.api_key_file; the hub retries by itself",
            )
            await self._wait_for_key()
            return
        self._failures += 1
        if o.kind == "network":
            s.link = "down"
            self._link_up.clear()
            self._warn_once(
                "network",
                f"upstream unreachable ({o.message}); events are kept and sent "
                "when the link returns. Check the WAN link",
            )
            return
        if o.kind in _HELD:
            # intercepted: like a network problem, but on the backoff schedule (the probe cannot tell a portal
            # from upstream). moved: a config problem, not a passing one, so the longest backoff.
            s.link = o.kind if o.kind != "error" else s.link
            self._warn_once(o.kind if o.kind != "error" else o.message, f"{self.target}: {o.message}; {_HELD[o.kind]}")
            await self._sleep(self.cfg.backoff_max if o.kind == "moved" else self._backoff())
            return
        delay = o.retry_after if o.retry_after is not None else self._backoff()
        s.link = "up"
        self._warn_once(
            o.kind, f"upstream answered {o.status} ({o.message}); retrying in {delay:.0f} s, events are kept"
        )
        await self._sleep(delay)

    async def _wait_for_key(self) -> None:
        """Retry after auth_retry_interval, or at once when the credentials change."""
        assert self.sink is not None
        stamp = self.sink.credentials_stamp()
        deadline = time.monotonic() + self.cfg.auth_retry_interval
        self.state.next_attempt_at = time.time() + self.cfg.auth_retry_interval
        self._wake.clear()
        while time.monotonic() < deadline and not self._stopping and not self._force:
            if self.sink.credentials_stamp() != stamp:
                log.info("upstream key changed; retrying now")
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=_KEY_POLL_S)
                if self._force or self._stopping:
                    break
                self._wake.clear()
            except TimeoutError:
                pass
        self.state.next_attempt_at = None

    def _traceback_once(self, what: str, exc: BaseException) -> None:
        """Log an unexpected error with its traceback once per cause (type and message), then quietly."""
        cause = f"{type(exc).__name__}: {exc}"[:300]
        if cause in self._tracebacks:
            log.debug("%s: %s (again)", what, cause)
            return
        self._tracebacks.add(cause)
        log.error("%s: %s", what, cause, exc_info=exc)

    def _warn_once(self, kind: str, message: str) -> None:
        """Warn once per kind of trouble, then quietly (a dead WAN must not flood the journal)."""
        if kind in self._warned:
            log.debug(message)
        else:
            self._warned.add(kind)
            log.warning(message)
