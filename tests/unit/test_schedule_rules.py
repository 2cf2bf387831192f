"""Retry backoff (doubling, capped, full jitter), upload windows (wrapping midnight) and the budget's day."""

from __future__ import annotations

import random
import re
from datetime import datetime

import pytest

from hub.config import parse_windows
from hub.forward.schedule import backoff_ceiling, backoff_delay, in_window, today


@pytest.fixture
def seeded():
    """A fixed random sequence for the test, with the global generator's state put back after it."""
    state = random.getstate()
    random.seed(20240101)
    yield
    random.setstate(state)


@pytest.mark.parametrize(
    ("failures", "ceiling"), [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0), (9, 300.0), (10, 300.0)]
)
def test_backoff_ceiling_doubles_up_to_the_maximum(failures, ceiling):
    assert backoff_ceiling(failures, 1.0, 300.0) == ceiling


@pytest.mark.parametrize("failures", [31, 64, 1000, 10**6, 10**100])
def test_backoff_ceiling_never_exceeds_the_maximum_for_huge_counts(failures):
    assert backoff_ceiling(failures, 1.0, 300.0) == 300.0
    assert backoff_ceiling(failures, 1e-6, 1e12) <= 1e12


def test_backoff_ceiling_is_non_decreasing():
    ceilings = [backoff_ceiling(n, 0.5, 600.0) for n in range(200)]
    assert ceilings == sorted(ceilings)
    assert ceilings[0] == 0.5
    assert max(ceilings) == 600.0


@pytest.mark.parametrize("failures", [0, 1, 5, 20, 10**6])
def test_backoff_delay_stays_within_zero_and_the_ceiling(seeded, failures):
    ceiling = backoff_ceiling(failures, 1.0, 300.0)
    delays = [backoff_delay(failures, 1.0, 300.0) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)


def test_backoff_delay_is_full_jitter_spread_over_the_whole_range(seeded):
    delays = [backoff_delay(20, 1.0, 300.0) for _ in range(2000)]
    assert min(delays) < 0.05 * 300.0
    assert max(delays) > 0.95 * 300.0
    assert 0.4 * 300.0 < sum(delays) / len(delays) < 0.6 * 300.0


def test_backoff_delay_is_deterministic_under_a_seed():
    state = random.getstate()
    try:
        random.seed(7)
        first = [backoff_delay(4, 1.0, 300.0) for _ in range(50)]
        random.seed(7)
        again = [backoff_delay(4, 1.0, 300.0) for _ in range(50)]
    finally:
        random.setstate(state)
    assert first == again
    assert len(set(first)) > 1


def at(hhmm: str) -> datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(2024, 5, 17, h, m, 30)


@pytest.mark.parametrize("hhmm", ["00:00", "06:00", "12:34", "23:59"])
def test_no_windows_means_always(hhmm):
    assert in_window([], at(hhmm))


@pytest.mark.parametrize(
    ("hhmm", "inside"),
    [("08:59", False), ("09:00", True), ("12:00", True), ("16:59", True), ("17:00", False), ("23:00", False)],
)
def test_window_within_a_day(hhmm, inside):
    assert in_window(parse_windows(("09:00-17:00",)), at(hhmm)) is inside


@pytest.mark.parametrize(
    ("hhmm", "inside"),
    [
        ("21:59", False),
        ("22:00", True),
        ("23:59", True),
        ("00:00", True),
        ("05:59", True),
        ("06:00", False),
        ("12:00", False),
    ],
)
def test_window_wrapping_midnight(hhmm, inside):
    assert in_window(parse_windows(("22:00-06:00",)), at(hhmm)) is inside


@pytest.mark.parametrize(
    ("hhmm", "inside"), [("01:30", True), ("03:00", False), ("12:15", True), ("13:00", False), ("23:30", True)]
)
def test_any_of_several_windows(hhmm, inside):
    windows = parse_windows(("23:00-02:00", "12:00-12:30"))
    assert in_window(windows, at(hhmm)) is inside


def test_today_is_the_local_date_of_now():
    assert today(datetime(2024, 3, 5, 23, 59, 59)) == "2024-03-05"
    assert today(datetime(2024, 3, 6, 0, 0, 0)) == "2024-03-06"


def test_today_without_an_argument_is_a_date():
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", today())
