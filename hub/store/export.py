"""A cursor over stored events for export: its own read-only connection, a page of rows at a time."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ..errors import HubError

# Rows read per query: the backlog is never loaded whole.
_PAGE = 200


class EventCursor:
    """Reads events in store order without holding up the hub's writer or readers (blocking: use a thread)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        if not self.path.exists():
            raise HubError(
                f"no hub database at {self.path}: give the data directory of a hub that has run (--data-dir)"
            )
        try:
            self._con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            self._con.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise HubError(f"cannot read the hub database {self.path}: {exc}") from None

    def events(self, *, pending: bool, since_ms: int | None = None) -> Iterator[bytes]:
        """Each event's bytes as the device sent them: only those not yet delivered if `pending`.

        Events that arrive while this runs are left for the next export (the upper bound is read first).
        """
        try:
            (upper,) = self._con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            where = ["seq > ?", "seq <= ?"]
            if pending:
                where.append("delivered_at IS NULL")
            if since_ms is not None:
                where.append("received_at >= ?")
            sql = f"SELECT seq, raw FROM stored_events WHERE {' AND '.join(where)} ORDER BY seq LIMIT {_PAGE}"
            last = 0
            while True:
                rows = self._con.execute(sql, [last, upper, *([since_ms] if since_ms is not None else [])]).fetchall()
                if not rows:
                    return
                for seq, raw in rows:
                    last = seq
                    yield bytes(raw)
        except sqlite3.Error as exc:
            raise HubError(f"cannot read the hub database {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def __enter__(self) -> EventCursor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
