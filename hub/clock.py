"""Whether the hub's own clock can be trusted, as the kernel knows it (adjtimex, like `timedatectl`).

A Raspberry Pi has no real-time clock: it boots with the time it last saved, often with the WAN down,
so its clock can be days off until NTP reaches a server. The Sunbird mobile app corrects its own
clock from the `ets` of a 200 answer when the two differ by more than a day (SyncPlugin.java
`postProcessTelemetrySync`: `Long.valueOf(response.optString("ets"))`; a missing `ets` makes that
throw, which the plugin catches, and nothing is corrected). So while the kernel says the clock is
not synchronised, the hub leaves `ets` out of its answers: a device keeps its own time rather than
take the hub's error. Pure rules (`synchronised`, `tells_time`) plus one cached reading.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time
from dataclasses import dataclass

__all__ = ["CLOCK_TRUST", "ClockCheck", "ClockState", "read_kernel_clock", "synchronised", "tells_time"]

log = logging.getLogger(__name__)

# server.clock_trust: kernel = tell devices the time only while the kernel says it is synchronised;
# always = always (a hub with a battery-backed RTC and no NTP); never = never send `ets`.
CLOCK_TRUST = ("kernel", "always", "never")

_TIME_ERROR = 5  # adjtimex's return value when the clock is not synchronised
_STA_UNSYNC = 0x0040  # status bit: the clock is not synchronised (cleared by an NTP daemon)
_CACHE_S = 10.0


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux), with its trailing padding."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockState:
    """What the kernel says about the clock: synchronised True/False, or None when it cannot be asked."""

    synchronised: bool | None
    max_error_s: float | None = None  # the kernel's bound on the clock's error, when synchronised


def synchronised(result: int, status: int) -> bool:
    """The kernel's verdict from adjtimex's return value and status bits (as timedatectl's 'NTP synchronized')."""
    return result != _TIME_ERROR and not status & _STA_UNSYNC


def tells_time(trust: str, state: ClockState) -> bool:
    """Whether answers carry `ets`: only when the hub's clock is known to be good (or trusted by config)."""
    if trust == "always":
        return True
    if trust == "never":
        return False
    return state.synchronised is True


def read_kernel_clock() -> ClockState:
    """One adjtimex(2) call that changes nothing (modes = 0; no privilege needed)."""
    if not sys.platform.startswith("linux"):
        return ClockState(None)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        tx = _Timex()
        result = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError) as exc:
        log.debug("cannot ask the kernel about the clock: %s", exc)
        return ClockState(None)
    if result < 0:
        return ClockState(None)
    ok = synchronised(result, int(tx.status))
    return ClockState(ok, tx.maxerror / 1e6 if ok else None)


class ClockCheck:
    """The clock's state, read at most every few seconds (cheap, but asked on every device answer)."""

    def __init__(self, trust: str = "kernel") -> None:
        self.trust = trust
        self._state = ClockState(None)
        self._read_at = -_CACHE_S
        self._last_told: bool | None = None

    def state(self) -> ClockState:
        """The kernel's latest word on the clock."""
        now = time.monotonic()
        if now - self._read_at >= _CACHE_S:
            self._state, self._read_at = read_kernel_clock(), now
        return self._state

    def tells_time(self) -> bool:
        """Whether device answers carry `ets` now; logs once each time that changes."""
        told = tells_time(self.trust, self.state())
        if told != self._last_told:
            self._last_told = told
            if told:
                log.info("the clock is synchronised: device answers carry the hub's time (ets) again")
            else:
                log.warning(
                    "the clock is not known to be right (%s): device answers leave out the hub's time (ets), "
                    "so phones keep their own clocks; check `timedatectl` and that NTP can reach a server",
                    "server.clock_trust = never" if self.trust == "never" else "the kernel says not synchronised",
                )
        return told

    def facts(self) -> dict[str, object]:
        """For /health, the status page and the metric."""
        s = self.state()
        return {"synchronised": s.synchronised, "trust": self.trust, "ets_in_answers": tells_time(self.trust, s)}
