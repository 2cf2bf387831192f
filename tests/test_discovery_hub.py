"""The real hub (`telemetry-hub run`) found over real multicast by `telemetry-hub discover`."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from support.netns import Lab, Proc
from test_discovery import V4_A, V6_A, _pair

pytestmark = pytest.mark.slow  # network namespaces


def _hub(lab: Lab, ns: str, data: Path, config: Path) -> Proc:
    proc = Proc(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "hub",
            "--config",
            str(config),
            "run",
            "--data-dir",
            str(data),
        ]
    )
    lab.procs.append(proc)
    return proc


def _discover(lab: Lab, ns: str) -> list[dict]:
    proc = Proc(["ip", "netns", "exec", ns, sys.executable, "-m", "hub", "discover", "--json", "--timeout", "2"])
    lab.procs.append(proc)
    proc.popen.wait(30)
    for t in proc._threads:
        t.join(2)
    out = []
    while not proc.lines.empty():
        out.append(proc.lines.get())
    return json.loads("\n".join(out) or "[]")


@pytest.mark.netns
def test_running_hub_is_found_with_every_txt_property(lab: Lab, tmp_path: Path) -> None:
    pair = _pair(lab)
    cfg = tmp_path / "hub.toml"
    cfg.write_text(
        '[server]\nbranch_name = "Govt School Block B"\nport = 9001\n'
        "[tls]\nenabled = true\nport = 9443\n"
        '[discovery]\ninstance = "Block B hub"\ntxt = { region = "north" }\n'
    )
    data = tmp_path / "data"
    hub = _hub(lab, pair.a, data, cfg)
    hub.wait_stderr(lambda line: "devices can sync to" in line, 20)
    deadline = time.monotonic() + 15
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = [h for h in _discover(lab, pair.b) if h["name"].startswith("Block B hub")]
        if found:
            break
    assert found, f"the hub was not found from the other namespace\n{hub.output()}"
    h = found[0]
    assert h["port"] == 9001
    assert {V4_A, V6_A} <= set(h["addresses"])
    fingerprint = next(line for line in hub.stderr if "fingerprint" in line).rsplit("fingerprint ", 1)[1].split()[0]
    assert h["properties"] == {
        "path": "/api/data/v1/telemetry",
        "ver": "1.0",
        "hub": (data / "hub-id").read_text().strip(),
        "name": "Govt School Block B",
        "auth": "0",
        "tls": fingerprint,
        "region": "north",
    }
    # Stopping the hub says goodbye: a new browse no longer finds it.
    assert hub.stop(signal.SIGTERM, timeout=20) == 0
    assert not [x for x in _discover(lab, pair.b) if x["name"].startswith("Block B hub")]
