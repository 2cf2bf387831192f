"""The store's figures: what a request became, and the live counts health checks read from memory."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AddResult", "StoreStats"]


@dataclass(frozen=True, slots=True)
class AddResult:
    """What one request's events became once committed."""

    new: int
    duplicates: int
    quarantined: int


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
    # Why commits fail right now (the disk, a read-only file system...), in words for people; None when they work.
    unavailable: str | None = None
    # The oldest event waiting for upstream (refreshed every second by the store's space loop): its seq,
    # when it was received, and since when it has been the oldest (epoch s); None when nothing waits.
    oldest_waiting_seq: int | None = None
    oldest_waiting_at: float | None = None
    oldest_waiting_since: float | None = None

    def note_oldest(self, oldest: tuple[int, int] | None, now: float) -> None:
        """Take the oldest waiting event's (seq, received_at ms); a new seq is the oldest from `now` on."""
        if oldest is None:
            self.oldest_waiting_seq = self.oldest_waiting_at = self.oldest_waiting_since = None
            return
        seq, received_ms = oldest
        if seq != self.oldest_waiting_seq:
            self.oldest_waiting_seq = seq
            self.oldest_waiting_since = now
        self.oldest_waiting_at = received_ms / 1000

    def oldest_waiting_age(self, now: float) -> float | None:
        """Seconds the oldest waiting event has waited, or None when nothing waits."""
        return None if self.oldest_waiting_at is None else max(0.0, now - self.oldest_waiting_at)
