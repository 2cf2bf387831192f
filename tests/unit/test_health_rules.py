"""The health rules: which figures make which problem, how bad, in what order, and the overall state."""

from __future__ import annotations

import dataclasses
import time

import pytest

from hub.config import GiB, HealthConfig, MiB
from hub.health import HealthInputs, Problem, assess, state_of

NOW = 1_700_000_000.0

HEALTHY = HealthInputs(
    writable=True,
    space_problem=None,
    db_bytes=10 * MiB,
    free_bytes=20 * GiB,
    max_bytes=4 * GiB,
    min_free_bytes=200 * MiB,
    backlog=0,
    dead_letters=0,
    upstream_configured=True,
    link="up",
)


def problems(cfg: HealthConfig | None = None, now: float = NOW, **changes) -> list[Problem]:
    return assess(dataclasses.replace(HEALTHY, **changes), cfg or HealthConfig(), now)


def codes(found: list[Problem]) -> list[tuple[str, str]]:
    return [(p.severity, p.code) for p in found]


def test_healthy_hub_has_no_problems():
    assert problems() == []
    assert state_of(problems()) == "ok"


def test_not_writable_is_critical():
    found = problems(writable=False)
    assert codes(found) == [("critical", "store-not-writable")]
    assert state_of(found) == "failing"


def test_space_problem_is_critical_store_full_in_its_words():
    found = problems(space_problem="the store is at its cap")
    assert codes(found) == [("critical", "store-full")]
    assert "the store is at its cap" in found[0].message
    assert state_of(found) == "failing"


def test_space_problem_outranks_nearly_full():
    assert codes(problems(space_problem="full", db_bytes=4 * GiB)) == [("critical", "store-full")]


def test_store_at_the_warn_fraction_is_nearly_full():
    found = problems(db_bytes=int(0.8 * 4 * GiB) + 1)
    assert codes(found) == [("warning", "store-nearly-full")]
    assert "80%" in found[0].message
    assert "store.max_bytes" in found[0].message
    assert state_of(found) == "attention"


def test_store_just_under_the_warn_fraction_is_fine():
    assert problems(db_bytes=int(0.8 * 4 * GiB) - 1) == []


def test_warn_fraction_comes_from_the_health_config():
    cfg = HealthConfig(store_warn_fraction=0.5)
    assert codes(problems(cfg, db_bytes=2 * GiB)) == [("warning", "store-nearly-full")]
    assert problems(cfg, db_bytes=2 * GiB - 1) == []


def test_no_cap_means_never_nearly_full():
    assert problems(max_bytes=0, db_bytes=100 * GiB) == []


def test_low_free_disk_is_a_warning():
    found = problems(free_bytes=2 * 200 * MiB - 1)
    assert codes(found) == [("warning", "disk-low")]
    assert "store.min_free_bytes" in found[0].message


def test_free_disk_at_twice_the_minimum_is_fine():
    assert problems(free_bytes=2 * 200 * MiB) == []


def test_unknown_free_disk_is_not_reported():
    assert problems(free_bytes=0) == []


def test_no_upstream_is_a_note():
    found = problems(upstream_configured=False, link="disabled")
    assert codes(found) == [("note", "no-upstream")]
    assert "upstream.url" in found[0].message
    assert state_of(found) == "ok"


def test_no_upstream_is_never_unreachable():
    found = problems(upstream_configured=False, link="down", backlog=10, down_since=NOW - 86400)
    assert codes(found) == [("note", "no-upstream")]


def test_rejected_key_is_a_warning_quoting_upstream():
    found = problems(link="auth-failed", backlog=1234, last_error="auth: invalid api key")
    assert codes(found) == [("warning", "upstream-key-rejected")]
    assert "it answered: invalid api key" in found[0].message
    assert "1,234 events" in found[0].message
    assert "upstream.api_key_file" in found[0].message


def test_rejected_key_without_an_answer_says_http_401():
    found = problems(link="auth-failed")
    assert "it answered: HTTP 401" in found[0].message


def test_rejected_key_answer_without_a_kind_is_quoted_whole():
    found = problems(link="auth-failed", last_error="Forbidden")
    assert "it answered: Forbidden" in found[0].message


def test_link_down_with_backlog_long_enough_is_unreachable():
    found = problems(link="down", backlog=42, down_since=NOW - 30 * 60)
    assert codes(found) == [("warning", "upstream-unreachable")]
    assert "42 events" in found[0].message
    assert "30 min" in found[0].message


def test_link_down_not_yet_long_enough_is_not_reported():
    assert problems(link="down", backlog=42, down_since=NOW - 30 * 60 + 1) == []


def test_link_down_with_empty_backlog_is_not_reported():
    assert problems(link="down", backlog=0, down_since=NOW - 86400) == []


def test_link_down_falls_back_to_the_last_error_time():
    found = problems(link="down", backlog=1, down_since=None, last_error_at=NOW - 3600)
    assert codes(found) == [("warning", "upstream-unreachable")]
    assert problems(link="down", backlog=1, down_since=None, last_error_at=None) == []


def test_upstream_down_minutes_comes_from_the_health_config():
    cfg = HealthConfig(upstream_down_minutes=5)
    assert codes(problems(cfg, link="down", backlog=1, down_since=NOW - 300)) == [("warning", "upstream-unreachable")]
    assert problems(cfg, link="down", backlog=1, down_since=NOW - 299) == []


@pytest.mark.parametrize("link", ["up", "unknown"])
def test_link_not_down_is_not_unreachable(link):
    assert problems(link=link, backlog=10, down_since=NOW - 86400) == []


def test_dead_letters_at_the_threshold_are_a_warning():
    found = problems(dead_letters=50)
    assert codes(found) == [("warning", "dead-letters")]
    assert "50 events were refused" in found[0].message


def test_many_dead_letters_use_thousands_separators():
    assert "12,345 events" in problems(dead_letters=12345)[0].message


def test_dead_letters_threshold_comes_from_the_health_config():
    assert codes(problems(HealthConfig(dead_letters=3), dead_letters=3)) == [("warning", "dead-letters")]


def test_fewer_dead_letters_are_a_note_in_plural():
    found = problems(dead_letters=49)
    assert codes(found) == [("note", "dead-letters")]
    assert "49 events were refused" in found[0].message


def test_one_dead_letter_is_a_note_in_singular():
    found = problems(dead_letters=1)
    assert codes(found) == [("note", "dead-letters")]
    assert "1 event was refused" in found[0].message
    assert "events" not in found[0].message


def test_waiting_for_is_a_note_when_events_wait():
    found = problems(backlog=5, waiting_for="the upload window (22:00-06:00)")
    assert codes(found) == [("note", "waiting")]
    assert found[0].message == "Upload is waiting for the upload window (22:00-06:00)."


@pytest.mark.parametrize(
    "changes",
    [
        {"backlog": 0},
        {"link": "auth-failed"},
        {"upstream_configured": False},
    ],
)
def test_waiting_for_is_not_said_when_it_means_nothing(changes):
    found = problems(**{"backlog": 5, "waiting_for": "the daily byte budget", **changes})
    assert "waiting" not in [p.code for p in found]


def test_problems_are_sorted_critical_warning_note():
    found = problems(
        writable=False,
        free_bytes=1 * MiB,
        upstream_configured=False,
        dead_letters=1,
    )
    assert [p.severity for p in found] == ["critical", "warning", "note", "note"]
    assert codes(found)[:2] == [("critical", "store-not-writable"), ("warning", "disk-low")]
    assert state_of(found) == "failing"


def test_sorting_puts_a_late_warning_before_an_early_note():
    found = problems(upstream_configured=False, dead_letters=60)
    assert codes(found) == [("warning", "dead-letters"), ("note", "no-upstream")]


@pytest.mark.parametrize(
    ("severities", "state"),
    [
        ([], "ok"),
        (["note"], "ok"),
        (["note", "note"], "ok"),
        (["warning"], "attention"),
        (["note", "warning"], "attention"),
        (["warning", "critical"], "failing"),
        (["critical"], "failing"),
    ],
)
def test_state_of(severities, state):
    assert state_of([Problem(s, "x", "y") for s in severities]) == state


# ---- a stalled delivery: the oldest waiting event has not moved ------------------------------------------------

STALL = 15 * 60  # HealthConfig().stall_minutes in seconds


def stalled(seconds: float, **changes) -> list[Problem]:
    """The oldest waiting event has been first in line for `seconds` (received a minute before that)."""
    since = NOW - seconds
    return problems(backlog=120, oldest_waiting_since=since, oldest_waiting_at=since - 60, **changes)


def test_new_health_inputs_have_defaults_so_old_callers_still_work():
    assert HEALTHY.oldest_waiting_since is None and HEALTHY.oldest_waiting_at is None
    assert HEALTHY.store_error is None


def test_oldest_event_unmoved_past_stall_minutes_is_a_warning_saying_since_when_and_what_to_do():
    found = stalled(STALL + 1)
    assert codes(found) == [("warning", "delivery-stalled")]
    message = found[0].message
    assert "stalled" in message and "15 min" in message
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(NOW - STALL - 1)) in message  # since when
    assert "120 events" in message and "telemetry-hub sync" in message and "log" in message
    assert state_of(found) == "attention"


def test_oldest_event_moved_recently_is_no_stall():
    assert stalled(STALL - 1) == []


def test_stall_minutes_come_from_the_health_config_and_may_be_fractional():
    cfg = HealthConfig(stall_minutes=0.02)  # 1.2 s
    assert codes(problems(cfg, backlog=1, oldest_waiting_since=NOW - 1.3)) == [("warning", "delivery-stalled")]
    assert problems(cfg, backlog=1, oldest_waiting_since=NOW - 1.0) == []


@pytest.mark.parametrize("link", ["down", "auth-failed", "disabled"])
def test_a_link_with_its_own_problem_is_not_called_a_stall(link):
    assert "delivery-stalled" not in [p.code for p in stalled(10 * STALL, link=link)]


@pytest.mark.parametrize("link", ["up", "unknown", "intercepted", "moved"])
def test_any_other_link_state_stalls_visibly(link):
    assert "delivery-stalled" in [p.code for p in stalled(STALL + 1, link=link)]


def test_no_upstream_or_nothing_waiting_or_a_window_holding_it_back_is_no_stall():
    assert codes(stalled(10 * STALL, upstream_configured=False)) == [("note", "no-upstream")]
    assert problems(backlog=0, oldest_waiting_since=NOW - 10 * STALL) == []
    assert codes(stalled(10 * STALL, waiting_for="the upload window (22:00-06:00)")) == [("note", "waiting")]


def test_store_error_is_named_in_the_not_writable_problem():
    found = problems(
        writable=False, store_error="the disk holding /data fails to read or write (SQLite: disk I/O error)"
    )
    assert codes(found) == [("critical", "store-not-writable")]
    assert "disk I/O error" in found[0].message and "journalctl" in found[0].message


def test_an_intercepted_or_moved_link_is_a_warning_that_says_what_to_do() -> None:
    from hub.config import HealthConfig
    from hub.health import HealthInputs, assess

    base = dict(
        writable=True,
        space_problem=None,
        db_bytes=0,
        free_bytes=10**12,
        max_bytes=10**9,
        min_free_bytes=1,
        backlog=30,
        dead_letters=0,
        upstream_configured=True,
    )
    found = assess(
        HealthInputs(**base, link="intercepted", last_error="intercepted: HTML page 'Login'"), HealthConfig(), 0.0
    )
    assert [(p.severity, p.code) for p in found] == [("warning", "upstream-intercepted")]
    assert "captive portal" in found[0].message and "https://" in found[0].message and "30 events" in found[0].message
    found = assess(
        HealthInputs(**base, link="moved", last_error="moved: 301 to https://new.example/"), HealthConfig(), 0.0
    )
    assert [(p.severity, p.code) for p in found] == [("warning", "upstream-moved")]
    assert "upstream.url" in found[0].message and "https://new.example/" in found[0].message
