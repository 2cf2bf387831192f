"""Space accounting: the store's cap and the disk's free-space floor, measured without scanning tables."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

from ..config import StoreConfig

log = logging.getLogger(__name__)


class StoreStatsLike(Protocol):
    """The figures space accounting reads and writes (StoreStats)."""

    db_bytes: int
    free_bytes: int
    full_reason: str | None


class Space:
    """Decides whether new data fits: store.max_bytes for the files, store.min_free_bytes for the disk."""

    def __init__(self, path: Path, cfg: StoreConfig, stats: StoreStatsLike) -> None:
        self.path = path
        self.cfg = cfg
        self.stats = stats
        # Bytes queued for the writer since the last measurement; they count against the cap too.
        self.pending_bytes = 0

    def measure(self) -> tuple[int, int]:
        """(bytes of the database with its WAL and shared memory, bytes free on its disk); blocking."""
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        free = shutil.disk_usage(self.path.parent).free
        return size, free

    async def refresh(self) -> None:
        """Measure again and say once, in the log, when new data starts or stops being refused."""
        size, free = await asyncio.to_thread(self.measure)
        s = self.stats
        s.db_bytes, s.free_bytes = size, free
        self.pending_bytes = 0
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

    def problem(self, incoming: int = 0) -> str | None:
        """Why new data cannot be taken now (cap or free-space floor), or None."""
        s = self.stats
        if s.full_reason:
            return s.full_reason
        # Bytes queued since the last measurement count against the cap too (x2: WAL, then the table).
        if s.db_bytes + 2 * (self.pending_bytes + incoming) >= self.cfg.max_bytes:
            return (
                f"the store is at its cap of {self.cfg.max_bytes // 2**20} MiB (store.max_bytes); "
                "new data waits until upstream takes the backlog or the cap is raised"
            )
        return None
