"""One identity per hub, even from a cloned SD card: the hub id, admin token and TLS key belong to a machine.

Branch IT often sets up one Pi, tests it, and copies its card to every branch. Each copy would then share
the hub id (the `did` upstream and the heartbeat's identity), the admin token and the TLS key. So the data
directory also remembers which machine made them (`<data_dir>/machine`: a SHA-256 of the machine's
fingerprint, never the serial itself). When the hub starts on another machine, it makes a new hub id, admin
token and self-signed certificate (and forgets the sign-in sessions of the old token), keeps the events (they
are this branch's own from now on), and logs one line saying so.

The fingerprint: the Raspberry Pi's CPU serial (`Serial` in /proc/cpuinfo), else /etc/machine-id, else the
first network interface's MAC address (by name). `TELEMETRY_HUB_MACHINE_ID` overrides it (tests, and a
machine whose sources change). A machine with none of them keeps its identity as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .secrets import write_private

__all__ = ["MACHINE_ENV", "bind_to_machine", "machine_fingerprint"]

log = logging.getLogger(__name__)

MACHINE_ENV = "TELEMETRY_HUB_MACHINE_ID"
_NO_MAC = "00:00:00:00:00:00"


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", errors="replace")
    except OSError:
        return ""


def machine_fingerprint() -> str:
    """Where this machine's identity comes from, as "source:value"; "" when no source is readable."""
    given = os.environ.get(MACHINE_ENV, "").strip()
    if given:
        return f"env:{given}"
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "serial" and value.strip().strip("0"):
            return f"cpu-serial:{value.strip()}"
    machine_id = _read(Path("/etc/machine-id")).strip()
    if machine_id:
        return f"machine-id:{machine_id}"
    net = Path("/sys/class/net")
    try:
        names = sorted(p.name for p in net.iterdir() if p.name != "lo")
    except OSError:
        names = []
    for name in names:
        mac = _read(net / name / "address").strip().lower()
        if mac and mac != _NO_MAC:
            return f"mac:{mac}"
    return ""


def bind_to_machine(data_dir: Path, *, tls_in_data_dir: bool, token_in_data_dir: bool) -> bool:
    """Make the data directory's identity this machine's; True when it was made anew (a moved or cloned card).

    Only what lives in the data directory is renewed: an admin token from auth.admin_token_file or the
    environment, and a configured certificate, are the operator's and stay.
    """
    fingerprint = machine_fingerprint()
    if not fingerprint:
        return False
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()
    path = data_dir / "machine"
    recorded = _read(path).strip()
    if recorded == digest:
        return False
    moved = bool(recorded) and (data_dir / "hub-id").exists()
    if moved:
        old = (_read(data_dir / "hub-id").strip() or "?")[:8]
        doomed = [data_dir / "hub-id", data_dir / "sessions.json"]
        if token_in_data_dir:
            doomed.append(data_dir / "admin-token")
        if tls_in_data_dir:
            doomed += [data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"]
        for p in doomed:
            p.unlink(missing_ok=True)
        log.warning(
            "this data directory was made on another machine (a copied SD card?): this hub gets its own id, "
            "admin token%s (the old id began %s); its events are kept and delivered as this hub's",
            " and TLS certificate" if tls_in_data_dir else "",
            old,
        )
    write_private(path, (digest + "\n").encode())
    return moved
