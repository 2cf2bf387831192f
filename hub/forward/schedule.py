"""When delivery may run: upload windows (parsed by config), the daily byte budget's day, retry backoff."""

from __future__ import annotations

import random
from datetime import datetime

__all__ = ["backoff_ceiling", "backoff_delay", "in_window", "today"]


def in_window(windows: list[tuple[int, int]], now: datetime) -> bool:
    """Whether `now` (local time) falls in any window; windows may wrap past midnight; none = always."""
    if not windows:
        return True
    m = now.hour * 60 + now.minute
    for start, end in windows:
        if start <= end and start <= m < end:
            return True
        if start > end and (m >= start or m < end):
            return True
    return False


def today(now: datetime | None = None) -> str:
    """The local date, the day upstream.daily_byte_budget counts in."""
    return (now or datetime.now()).strftime("%Y-%m-%d")


def backoff_ceiling(failures: int, initial: float, maximum: float) -> float:
    """The longest wait after `failures` failures in a row: doubling from `initial`, capped at `maximum`."""
    return min(maximum, initial * (2 ** min(failures, 30)))


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """A wait drawn with full jitter under the ceiling, so many hubs do not retry in step."""
    return random.uniform(0, backoff_ceiling(failures, initial, maximum))
