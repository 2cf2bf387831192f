"""The health rules: what is wrong right now, in words branch IT can act on, from figures alone.

Pure: `assess` takes a snapshot of figures and returns problems, so /health, the status page,
`telemetry-hub status` and the unit tests all judge the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import HealthConfig
from .words import clock, duration_text, size_text

__all__ = ["STATE_TEXT", "HealthInputs", "Problem", "assess", "state_of"]

# Health reports "full" once a typical request would no longer fit.
HEALTH_MARGIN_BYTES = 32 * 1024

STATE_TEXT = {
    "ok": "Working normally",
    "attention": "Needs attention",
    "failing": "Not working: new telemetry is refused",
}
_ORDER = {"critical": 0, "warning": 1, "note": 2}


@dataclass(frozen=True)
class Problem:
    """One thing wrong, in words branch IT can act on."""

    severity: str  # critical (telemetry is refused) | warning (needs someone) | note (for information)
    code: str
    message: str


@dataclass(frozen=True)
class HealthInputs:
    """The figures the rules look at, read from memory (cheap enough for every /health)."""

    writable: bool
    space_problem: str | None  # why new data is refused for lack of room, or None
    db_bytes: int
    free_bytes: int
    max_bytes: int
    min_free_bytes: int
    backlog: int
    dead_letters: int
    upstream_configured: bool
    link: str  # unknown | up | down | auth-failed | disabled
    last_error: str | None = None
    last_error_at: float | None = None
    down_since: float | None = None
    waiting_for: str | None = None
    store_error: str | None = None  # why commits fail right now (StoreStats.unavailable), in words
    oldest_waiting_at: float | None = None  # when the oldest event waiting for upstream was received
    oldest_waiting_since: float | None = None  # since when that event has been the oldest waiting
    clock_synchronised: bool | None = None  # the kernel's word on the clock (hub.clock); None: not known


def _answer(error: str | None) -> str:
    """Upstream's answer from ForwardState.last_error ("auth: <body>")."""
    if not error:
        return "HTTP 401"
    kind, sep, rest = error.partition(": ")
    return rest if sep and kind.isidentifier() else error


def _space(i: HealthInputs, cfg: HealthConfig) -> Problem | None:
    if i.space_problem:
        return Problem("critical", "store-full", f"New telemetry is refused: {i.space_problem}.")
    cap = i.max_bytes
    if cap and i.db_bytes >= cfg.store_warn_fraction * cap:
        return Problem(
            "warning",
            "store-nearly-full",
            f"The store is at {100 * i.db_bytes // cap}% of its cap ({size_text(i.db_bytes)} of "
            f"{size_text(cap)}, store.max_bytes); at 100% it refuses new telemetry. "
            "Get the backlog delivered, or raise the cap if the disk has room.",
        )
    if i.free_bytes and i.free_bytes < 2 * i.min_free_bytes:
        return Problem(
            "warning",
            "disk-low",
            f"Only {size_text(i.free_bytes)} free on the disk; below {size_text(i.min_free_bytes)} "
            "(store.min_free_bytes) the hub refuses new telemetry. Free some disk space.",
        )
    return None


def _upstream(i: HealthInputs, cfg: HealthConfig, now: float) -> Problem | None:
    if not i.upstream_configured:
        return Problem(
            "note", "no-upstream", "No upstream is configured (upstream.url): telemetry is kept on this hub only."
        )
    if i.link == "auth-failed":
        return Problem(
            "warning",
            "upstream-key-rejected",
            f"The institute's server rejects this hub's API key (it answered: {_answer(i.last_error)}). "
            f"Nothing is lost: {i.backlog:,} events wait here. Put the right key in "
            "upstream.api_key_file; the hub retries by itself.",
        )
    if i.link == "intercepted":
        return Problem(
            "warning",
            "upstream-intercepted",
            "Something other than the institute's server answers the hub (a captive portal, a data-pack page "
            f"or a proxy: {_answer(i.last_error)}). Nothing is marked delivered; {i.backlog:,} events wait here. "
            "Log in or recharge the WAN link, or use an https:// upstream.url; the hub retries by itself.",
        )
    if i.link == "moved":
        return Problem(
            "warning",
            "upstream-moved",
            f"The institute's server answers with a redirect ({_answer(i.last_error)}); the hub does not follow "
            f"it. {i.backlog:,} events wait here. Put the new address in upstream.url and restart the hub.",
        )
    if i.link == "down":
        since = i.down_since or i.last_error_at or now
        if i.backlog and now - since >= cfg.upstream_down_minutes * 60:
            return Problem(
                "warning",
                "upstream-unreachable",
                f"The institute's server has been unreachable for {duration_text(now - since)} and "
                f"{i.backlog:,} events are waiting. Check the internet link; the events are "
                "kept and sent when it works again.",
            )
    return None


def _stalled(i: HealthInputs, cfg: HealthConfig, now: float) -> Problem | None:
    """The oldest waiting event has not moved although nothing known holds delivery back.

    Unreachable and rejected-key links have their own problems; an upload window or budget that
    holds delivery back is a note ("waiting"), not a stall.
    """
    if not i.upstream_configured or i.link in ("down", "auth-failed", "disabled") or i.waiting_for:
        return None
    since = i.oldest_waiting_since
    if not i.backlog or since is None or now - since < cfg.stall_minutes * 60:
        return None
    received = i.oldest_waiting_at or since
    return Problem(
        "warning",
        "delivery-stalled",
        f"Delivery to the institute's server is stalled: the oldest waiting event (received {clock(received)}) "
        f"has been first in line since {clock(since)}, {duration_text(now - since)} without being delivered, "
        f"while the link is {i.link!r}; {i.backlog:,} events wait. Look in the log "
        "(journalctl -u telemetry-hub) for what upstream answers, check the upstream server, "
        "then try `telemetry-hub sync`.",
    )


def _dead_letters(i: HealthInputs, cfg: HealthConfig) -> Problem | None:
    n = i.dead_letters
    if n >= cfg.dead_letters:
        return Problem(
            "warning",
            "dead-letters",
            f"{n:,} events were refused by the institute's server (dead letters). "
            "List them with `telemetry-hub dead-letter list`; re-queue them once the cause is fixed.",
        )
    if n:
        return Problem(
            "note",
            "dead-letters",
            f"{n:,} event{'s were' if n != 1 else ' was'} refused by the "
            "institute's server (dead letters): `telemetry-hub dead-letter list`.",
        )
    return None


def assess(i: HealthInputs, cfg: HealthConfig, now: float) -> list[Problem]:
    """Everything wrong right now, worst first."""
    out: list[Problem] = []
    if not i.writable:
        out.append(
            Problem(
                "critical",
                "store-not-writable",
                f"The hub cannot write to its database, so devices' telemetry is refused: {i.store_error}. "
                "The log has the details (journalctl -u telemetry-hub)."
                if i.store_error
                else "The hub cannot write to its database, so devices' telemetry is refused. "
                "Check the SD card and the log (journalctl -u telemetry-hub).",
            )
        )
    for found in (_space(i, cfg), _upstream(i, cfg, now), _stalled(i, cfg, now), _dead_letters(i, cfg)):
        if found is not None:
            out.append(found)
    if i.clock_synchronised is False:
        out.append(
            Problem(
                "note",
                "clock-unsynchronised",
                "The hub's clock is not synchronised (no NTP server reached yet; a Pi has no real-time clock), so "
                "it does not tell devices its time. Upload windows and times shown here follow this clock. "
                "Check `timedatectl` and that the network lets NTP through.",
            )
        )
    if i.upstream_configured and i.waiting_for and i.backlog and i.link != "auth-failed":
        out.append(Problem("note", "waiting", f"Upload is waiting for {i.waiting_for}."))
    return sorted(out, key=lambda p: _ORDER[p.severity])


def state_of(problems: Sequence[Problem]) -> str:
    """ok | attention | failing."""
    severities = {p.severity for p in problems}
    return "failing" if "critical" in severities else "attention" if "warning" in severities else "ok"
