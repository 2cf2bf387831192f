"""Session summary for the reliability tests: how much was thrown at the hub, and what was lost (nothing)."""

from __future__ import annotations

from reliability import tally


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not (
        tally.crash_rounds
        or tally.crash_seeds
        or tally.power_cuts
        or tally.fuzz_cases
        or tally.fault_scenarios
        or tally.acked_checked
    ):
        return  # no reliability test ran in this session
    terminalreporter.section("reliability summary")
    for line in tally.lines():
        terminalreporter.write_line(line)
    if tally.lost_events or tally.client_fault_5xx:
        terminalreporter.write_line("RELIABILITY FAILURE: see the counts above", red=True, bold=True)
