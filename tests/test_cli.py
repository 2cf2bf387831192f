"""The CLI as branch IT meets it over SSH: it finds the hub it runs next to, and speaks in words."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.hubproc import HubProcess, free_port
from support.hubs import write_config

pytestmark = pytest.mark.slow  # hub subprocesses and CLI subprocesses


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m hub ARGS` in `cwd`, with none of the developer's own hub settings leaking in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_HUB_") and k != "STATE_DIRECTORY"}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def system_hub(tmp_path: Path):
    """A hub installed 'system-wide' under a fake root: /etc/telemetry-hub/config.toml names its port and data."""
    root = tmp_path / "root"
    data = root / "var/lib/telemetry-hub"
    port = free_port()
    (root / "etc/telemetry-hub").mkdir(parents=True)
    config = write_config(
        root / "etc/telemetry-hub/config.toml", server={"port": port, "data_dir": str(data), "host": "127.0.0.1"}
    )
    data.parent.mkdir(parents=True)
    hub = HubProcess(data, config=config)
    hub.port = port
    hub.log_path = tmp_path / "hub.log"
    hub.start()
    try:
        yield root, hub
    finally:
        hub.terminate()


def test_status_over_ssh_finds_the_system_install(system_hub, tmp_path: Path) -> None:
    root, hub = system_hub
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    r = cli("status", cwd=elsewhere, env={"TELEMETRY_HUB_SYSTEM_ROOT": str(root)})
    assert r.returncode in (0, 1) and "State:" in r.stdout, r.stderr  # answered, with its token
    assert "refused" not in r.stderr
    # The same through the environment variable, and through the flags.
    config = str(root / "etc/telemetry-hub/config.toml")
    r = cli("status", cwd=elsewhere, env={"TELEMETRY_HUB_CONFIG": config})
    assert "State:" in r.stdout, r.stderr
    token = (hub.data_dir / "admin-token").read_text().strip()
    r = cli("status", "--url", hub.url, f"--token={token}", cwd=elsewhere)
    assert "State:" in r.stdout, r.stderr


def test_no_hub_here_says_what_was_tried(tmp_path: Path) -> None:
    root = tmp_path / "empty-root"
    root.mkdir()
    r = cli("status", cwd=tmp_path, env={"TELEMETRY_HUB_SYSTEM_ROOT": str(root)})
    assert r.returncode == 1
    for tried in (
        "--config (not given)",
        "$TELEMETRY_HUB_CONFIG (not set)",
        f"{root}/etc/telemetry-hub/config.toml (not there)",
        f"{root}/var/lib/telemetry-hub (no hub there)",
        "./telemetry-hub-data",
        "give --token",
    ):
        assert tried in r.stderr, (tried, r.stderr)
    assert "Errno" not in r.stderr and "('127.0.0.1'" not in r.stderr and "connection refused" in r.stderr


def test_the_cli_speaks_in_words(system_hub, tmp_path: Path) -> None:
    root, _ = system_hub
    env = {"TELEMETRY_HUB_SYSTEM_ROOT": str(root)}
    r = cli("sync", cwd=tmp_path, env=env)  # no upstream configured
    assert "None" not in r.stdout + r.stderr and "no upstream.url configured" in r.stdout, (r.stdout, r.stderr)
    r = cli("dead-letter", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "dead-letter list" in r.stderr and "required" not in r.stderr
    r = cli("dead-letter", "requeue", "nosuch-mid", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "re-queued 0 events" in r.stdout and "not a dead letter" in r.stderr
    assert "nosuch-mid" in r.stderr, r.stderr  # says which
    r = cli("dead-letter", "list", cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.startswith("0 dead letters"), (r.stdout, r.stderr)
    out = tmp_path / "backlog.zip"
    out.write_bytes(b"keep me")
    r = cli("export", "--out", str(out), "--all", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "--force" in r.stderr and out.read_bytes() == b"keep me"
    r = cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("telemetry-hub ")
    for command in ("sync", "status", "discover", "dead-letter", "import", "export"):
        r = cli(command, "--help", cwd=tmp_path)
        description = r.stdout.split("\n\n")[1]
        assert not description.startswith(("positional", "options")), (command, "has no description")
