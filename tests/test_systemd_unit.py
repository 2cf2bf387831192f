"""systemd/telemetry-hub.service is valid and keeps its sandbox.

Needs `systemd-analyze` (Debian package `systemd`). Without it the tests skip,
except under CI (CI=true), where a missing tool must not pass silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_NAME = "telemetry-hub.service"
UNIT = Path(__file__).resolve().parent.parent / "systemd" / UNIT_NAME
SHIPPED_BINARY = "/opt/telemetry-hub/venv/bin/telemetry-hub"

# `systemd-analyze security` findings we accept on purpose (see the unit's comments):
# the hub must talk IPv4/IPv6 to devices, mDNS and upstream, list interfaces over
# netlink, use unix sockets for the journal/sd_notify, reach any LAN range and a
# public upstream (no IP allow-list), runs from the host's root, and ProtectClock=
# leaves read access to the RTC device. Anything else failing is a regression.
ACCEPTED_EXPOSURES = {
    "PrivateNetwork=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_NETLINK",
    "RestrictAddressFamilies=~AF_UNIX",
    "IPAddressDeny=",
    "DeviceAllow=",
    "RootDirectory=/RootImage=",
}
MAX_EXPOSURE = 2.0  # measured 1.1 ("OK") with systemd 252 on Debian 12


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _need(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: install the Debian package 'systemd' in .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        _need("systemd-analyze is not installed (apt-get install systemd)")
    return exe


def _directives(text: str) -> dict[str, list[str]]:
    """Every Key=value of the unit (keys may repeat), section-qualified: 'Service.Type'."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _quote(arg: str) -> str:
    return f'"{arg}"' if re.search(r'[\s"\\]', arg) else arg


def _local_command() -> list[str]:
    """This checkout's hub: the venv's console script if installed, else `python -m hub`."""
    script = Path(sys.executable).parent / "telemetry-hub"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "hub"]


@pytest.fixture
def local_unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart's binary swapped for one that exists here.

    `systemd-analyze verify` checks that ExecStart's program exists; the shipped
    path (/opt/telemetry-hub/venv/...) only exists on a Pi. Only that program is
    replaced: the arguments and every other line stay as shipped.
    """
    text = UNIT.read_text()
    pattern = re.compile(rf"^ExecStart={re.escape(SHIPPED_BINARY)}(?=\s)", re.MULTILINE)
    assert len(pattern.findall(text)) == 1, f"expected one ExecStart={SHIPPED_BINARY} ... line"
    replacement = "ExecStart=" + " ".join(_quote(a) for a in _local_command())
    out = tmp_path / UNIT_NAME
    out.write_text(pattern.sub(lambda _m: replacement, text))
    return out


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "PAGER": "cat", "LC_ALL": "C.UTF-8"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_unit_has_the_required_settings() -> None:
    d = _directives(UNIT.read_text())
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.ExecStart": [f"{SHIPPED_BINARY} run --config /etc/telemetry-hub/config.toml"],
        "Service.WatchdogSec": ["30"],
        "Service.Restart": ["on-failure"],
        "Service.RestartSec": ["5"],
        "Service.TimeoutStopSec": ["90"],
        "Service.StateDirectory": ["telemetry-hub"],
        "Service.StateDirectoryMode": ["0700"],
        "Service.ConfigurationDirectory": ["telemetry-hub"],
        "Service.LoadCredential": ["upstream-key:/etc/telemetry-hub/upstream-key"],
        "Service.DynamicUser": ["yes"],
        "Service.CapabilityBoundingSet": [""],
        "Service.AmbientCapabilities": [""],
        "Service.UMask": ["0077"],
        "Service.MemoryDenyWriteExecute": ["yes"],
        "Service.RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"],
        "Service.SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "Install.WantedBy": ["multi-user.target"],
    }
    for key, value in expected.items():
        assert d.get(key) == value, f"{key}: expected {value!r}, unit has {d.get(key)!r}"
    assert "Service.IPAddressDeny" not in d  # would cut off LAN devices / mDNS / upstream


def test_systemd_analyze_verify_is_clean(analyze: str, local_unit: Path) -> None:
    proc = _run([analyze, "verify", "--man=no", str(local_unit)], cwd=local_unit.parent)
    output = (proc.stdout + proc.stderr).splitlines()
    ours = [line for line in output if UNIT_NAME in line or str(local_unit.parent) in line]
    noise = [line for line in output if line not in ours]
    if noise:  # e.g. complaints about other units on the host: shown, not failed on
        print("systemd-analyze verify, unrelated output:\n" + "\n".join(noise))
    assert not ours, "systemd-analyze verify complains about our unit:\n" + "\n".join(ours)
    assert proc.returncode == 0, f"systemd-analyze verify exited {proc.returncode}:\n" + "\n".join(output)


def test_systemd_analyze_verify_catches_mistakes(analyze: str, local_unit: Path) -> None:
    """Guard the guard: a typo in the unit must show up in what the test above reads."""
    local_unit.write_text(local_unit.read_text().replace("NotifyAccess=main", "NotifyAccess=mian"))
    proc = _run([analyze, "verify", "--man=no", str(local_unit)], cwd=local_unit.parent)
    assert "mian" in proc.stdout + proc.stderr


def test_security_exposure(analyze: str, local_unit: Path) -> None:
    proc = _run([analyze, "security", "--no-pager", "--offline=yes", str(local_unit)], cwd=local_unit.parent)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 and re.search(r"unrecognized option|Unknown option|--offline", text):
        _need(f"this systemd-analyze has no `security --offline` (needs systemd >= 252): {text.strip()[:200]}")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", text)
    assert m, f"no exposure score in systemd-analyze output (exit {proc.returncode}):\n{text}"
    score, band = float(m.group(1)), m.group(2)
    print(f"systemd-analyze security --offline=yes {UNIT_NAME}: exposure {score} {band}")
    failing = {line[1:].strip().split()[0] for line in proc.stdout.splitlines() if line.startswith("✗")}
    unexpected = sorted(failing - ACCEPTED_EXPOSURES)
    assert not unexpected, f"hardening lost (or new check in this systemd): {unexpected}\n{text}"
    assert score <= MAX_EXPOSURE, f"exposure {score} {band} is above {MAX_EXPOSURE}\n{text}"
    assert band in ("PERFECT", "SAFE", "OK"), band
