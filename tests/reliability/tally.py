"""What the reliability tests exercised, added up for the session summary (see conftest.py).

Tests add to these counters as they go; the summary prints them, so a green run also says how much
was really thrown at the hub (and that nothing was lost on the way).
"""

from __future__ import annotations

crash_rounds = 0  # hub killed with SIGKILL under load and restarted
power_cuts = 0  # crash states (block snapshots or reconstructed files) opened and checked
fuzz_cases = 0  # hostile requests / files thrown at the hub
fault_scenarios = 0  # full disk, store cap, SQLITE_FULL, slowloris, connection floods, ...
acked_checked = 0  # acknowledged events whose survival was checked
lost_events = 0  # acknowledged events missing afterwards (must stay 0)
client_fault_5xx = 0  # 5xx answers to requests that were the client's fault (must stay 0)
crash_seeds: list[int] = []  # the crash loop's random seeds this session (replay one with CRASH_SEED=<n>)


def add(**counts: int) -> None:
    """Add to the named counters, e.g. add(crash_rounds=1, lost_events=len(missing))."""
    g = globals()
    for name, n in counts.items():
        if name not in g or name.startswith("_") or not isinstance(g[name], int):
            raise KeyError(name)
        g[name] += n


def lines() -> list[str]:
    return [
        f"crash rounds (kill -9 under load): {crash_rounds}",
        f"power cuts simulated and checked: {power_cuts}",
        f"fuzz cases (hostile requests and files): {fuzz_cases}",
        f"fault scenarios (disk full, caps, slow clients, floods, ...): {fault_scenarios}",
        f"acknowledged events checked: {acked_checked}",
        f"LOST acknowledged events: {lost_events} (must be 0)",
        f"5xx answers to client faults: {client_fault_5xx} (must be 0)",
        *(
            f"crash loop seed: {seed} (replay: CRASH_SEED={seed} pytest tests/reliability/test_crash_loop.py)"
            for seed in crash_seeds
        ),
    ]
