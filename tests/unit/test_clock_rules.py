"""The clock rules: when the hub may tell devices its time (the `ets` the mobile app sets its clock by)."""

from __future__ import annotations

import sys

import pytest

from hub.clock import ClockCheck, ClockState, read_kernel_clock, synchronised, tells_time
from hub.telemetry import success_body

TIME_OK, TIME_ERROR, STA_PLL, STA_UNSYNC = 0, 5, 0x0001, 0x0040


def test_the_kernels_verdict_as_timedatectl_reads_it() -> None:
    assert synchronised(TIME_OK, STA_PLL)
    assert not synchronised(TIME_OK, STA_PLL | STA_UNSYNC)  # the unsync bit alone is enough
    assert not synchronised(TIME_ERROR, 0)  # and so is adjtimex's TIME_ERROR
    assert not synchronised(TIME_ERROR, STA_UNSYNC)


def test_ets_only_when_the_clock_is_known_good() -> None:
    good, bad, unknown = ClockState(True, 0.01), ClockState(False), ClockState(None)
    assert tells_time("kernel", good)
    assert not tells_time("kernel", bad) and not tells_time("kernel", unknown)
    assert tells_time("always", bad) and tells_time("always", unknown)
    assert not tells_time("never", good)


def test_the_answer_without_ets_is_still_a_sunbird_success() -> None:
    told = success_body("m1", {"received": 1}, ets=True)
    kept = success_body("m1", {"received": 1}, ets=False)
    assert isinstance(told["ets"], int)
    assert "ets" not in kept
    # Everything a client checks for success is the same (JS library: params.status; mobile: the 2xx).
    assert {k: v for k, v in told.items() if k not in ("ets", "ts", "params")} == {
        k: v for k, v in kept.items() if k not in ("ts", "params")
    }
    assert kept["params"]["status"] == "successful" and kept["responseCode"] == "SUCCESS"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_the_kernel_answers_and_the_check_follows_it() -> None:
    state = read_kernel_clock()
    assert state.synchronised in (True, False)  # adjtimex(modes=0) needs no privilege
    check = ClockCheck("kernel")
    assert check.tells_time() is (state.synchronised is True)
    assert ClockCheck("never").tells_time() is False and ClockCheck("always").tells_time() is True
    assert check.facts()["synchronised"] is state.synchronised
