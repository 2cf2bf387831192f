"""What the hub makes of events: checked events, quarantined ones, and a request's whole result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Event(NamedTuple):
    """One event that passed the hub's checks, with its bytes exactly as the device sent them.

    A NamedTuple, not a frozen dataclass: it is built once per event on the ingest hot path, and a
    frozen dataclass's __init__ costs several times more. Its strings are valid Unicode and `ets` is
    a float, so the store binds them as they are.
    """

    raw: bytes
    mid: str
    eid: str
    ets: float
    did: str | None
    channel: str | None
    pdata_id: str | None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An event the hub keeps aside (never forwarded), with the reason in words."""

    index: int
    reason: str
    raw: bytes
    mid: str | None = None


@dataclass
class Checked:
    """The outcome of checking one request's events."""

    events: list[Event] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    unchecked: int = 0  # events not schema-checked because the warning budget was spent
