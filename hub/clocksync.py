"""Whether the system clock is synchronised (NTP, chrony, systemd-timesyncd): the kernel knows, adjtimex says.

A Pi has no battery-backed clock: until it reaches a time server, its clock may be days off, and so are the
`ets` of what it writes. The kernel's answer to a read-only adjtimex(2) is TIME_ERROR (5) while the clock is
not synchronised, another state once a time daemon has disciplined it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["clock_synchronised"]

log = logging.getLogger(__name__)

_TIME_ERROR = 5
# struct timex is 208 bytes on 64-bit Linux; a larger zeroed buffer has modes = 0 (read only).
_TIMEX_BYTES = 512


def clock_synchronised() -> bool | None:
    """True or False from the kernel; None where it cannot be asked (not Linux, no libc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(_TIMEX_BYTES)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError) as exc:
        log.debug("cannot ask the kernel whether the clock is synchronised: %s", exc)
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR
