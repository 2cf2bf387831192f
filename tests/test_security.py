"""The hostile-LAN checks against a hub subprocess on real sockets: Host names, admin parameters, what the
log shows of upstream credentials, and the modes of the files the hub makes."""

from __future__ import annotations

import http.client
import json
import signal
import stat
import time
from pathlib import Path

import pytest
from support.hubproc import HubProcess
from support.hubs import write_config

pytestmark = pytest.mark.slow  # starts hub subprocesses


def _get(
    hub: HubProcess,
    path: str,
    host: str | None = None,
    token: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[int, bytes]:
    con = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    headers = {"Host": host} if host else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    con.request(method, path, body=body, headers=headers)
    r = con.getresponse()
    data = r.read()
    con.close()
    return r.status, data


@pytest.fixture
def hub(tmp_path: Path):
    cfg = write_config(
        tmp_path / "hub.toml", auth={"status_page_requires_token": "no"}, server={"host_names": ["hub.school.example"]}
    )
    h = HubProcess(tmp_path / "data", config=cfg)
    h.start()
    try:
        yield h
    finally:
        h.terminate()


def test_a_forged_host_gets_421_on_every_non_device_path(hub: HubProcess) -> None:
    """DNS rebinding: a page on attacker.example must not read status, even where no token is needed."""
    for path in ("/", "/status.json", "/health", "/metrics", "/import", "/admin/dead-letters"):
        status, body = _get(hub, path, host="attacker.example")
        assert status == 421, (path, status)
        assert b"does not answer to the name" in body and b"server.host_names" in body, path
    # The names it has, and a configured one, work (with or without the port).
    for host in (f"127.0.0.1:{hub.port}", "localhost", f"localhost:{hub.port}", "hub.school.example"):
        status, body = _get(hub, "/status.json", host=host)
        assert status == 200, (host, status, body[:200])
    # Devices may use any name: the device API answers as before.
    event = {
        "eid": "LOG",
        "ets": 1,
        "ver": "3.0",
        "mid": "sec-1",
        "actor": {"id": "a", "type": "User"},
        "context": {"channel": "c", "pdata": {"id": "p"}, "env": "e"},
        "edata": {"type": "t", "level": "INFO", "message": "m"},
    }
    status, body = _get(
        hub,
        "/api/data/v1/telemetry",
        host="attacker.example",
        method="POST",
        body=json.dumps({"events": [event]}).encode(),
    )
    assert status == 200, body[:300]
    assert "refused GET / for Host 'attacker.example'" in hub.log()


def test_bad_admin_parameters_get_a_400_naming_them(hub: HubProcess) -> None:
    token = (hub.data_dir / "admin-token").read_text().strip()
    for method, path, name in (
        ("POST", "/admin/sync?timeout=abc", "timeout"),
        ("POST", "/admin/sync?timeout=9999", "timeout"),
        ("GET", "/admin/dead-letters?limit=abc", "limit"),
        ("GET", "/admin/dead-letters?limit=-1", "limit"),
        ("GET", "/admin/dead-letters?limit=nan", "limit"),
        ("GET", "/admin/imports?limit=0", "limit"),
    ):
        status, body = _get(hub, path, token=token, method=method)
        assert status == 400, (path, status, body[:200])
        errmsg = json.loads(body)["params"]["errmsg"]
        assert errmsg.startswith(f"{name} must be a number from "), (path, errmsg)
    assert "Traceback" not in hub.log()


def test_upstream_credentials_never_reach_the_log_or_status(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "hub.toml",
        upstream={"url": "http://hubuser:s3cr3t-pw@127.0.0.1:9/x"},
        auth={"status_page_requires_token": "no"},
    )
    hub = HubProcess(tmp_path / "data", config=cfg)
    hub.start()
    try:
        status, body = _get(hub, "/status.json")
        assert status == 200 and json.loads(body)["upstream"]["url"] == "http://127.0.0.1:9/x"
        _, health = _get(hub, "/health")
    finally:
        hub.terminate()
    assert "127.0.0.1:9/x" in hub.log()  # it does say where it forwards to
    for where, text in (("log", hub.log()), ("status", body.decode()), ("health", health.decode())):
        assert "s3cr3t-pw" not in text and "hubuser" not in text, where


def test_files_the_hub_makes_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # an existing data directory others can read
    hub = HubProcess(data)
    hub.start()
    try:
        _get(hub, "/health")
    finally:
        hub.terminate()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("hub.db", "admin-token", "hub-id"):
        mode = stat.S_IMODE((data / name).stat().st_mode)
        assert mode & 0o077 == 0, (name, oct(mode))
    assert f"made {data} private" in hub.log()


def _post_events(hub: HubProcess, key: str, mid: str) -> int:
    event = {
        "eid": "LOG",
        "ets": 1,
        "ver": "3.0",
        "mid": mid,
        "actor": {"id": "a", "type": "User"},
        "context": {"channel": "c", "pdata": {"id": "p"}, "env": "e"},
        "edata": {"type": "t", "level": "INFO", "message": "m"},
    }
    con = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    con.request(
        "POST",
        "/api/data/v1/telemetry",
        body=json.dumps({"events": [event]}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    status = con.getresponse().status
    con.close()
    return status


def test_a_revoked_device_key_is_refused_within_seconds(tmp_path: Path) -> None:
    """The keys file is watched (and re-read on SIGHUP): no restart is needed to revoke a key."""
    keys = tmp_path / "device-keys"
    keys.write_text("# one key per line\nkey-old\n")
    hub = HubProcess(
        tmp_path / "data", config=write_config(tmp_path / "hub.toml", auth={"device_keys_file": str(keys)})
    )
    hub.start()
    try:
        assert _post_events(hub, "key-old", "k-1") == 200
        assert _post_events(hub, "key-new", "k-2") == 401
        keys.write_text("key-new\n")  # revoke the old key, add a new one
        deadline = time.monotonic() + 5
        while _post_events(hub, "key-old", "k-3") != 401:
            assert time.monotonic() < deadline, "a revoked key still works"
            time.sleep(0.2)
        assert _post_events(hub, "key-new", "k-4") == 200
        # SIGHUP (systemctl reload) reads it at once; an emptied file refuses every key (fail closed).
        keys.write_text("# nothing here\n")
        assert hub.proc is not None
        hub.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while _post_events(hub, "key-new", "k-5") != 401:
            assert time.monotonic() < deadline, "an emptied keys file still let a key in"
            time.sleep(0.2)
        assert hub.proc.poll() is None, "SIGHUP stopped the hub"
    finally:
        hub.terminate()
    assert "holds no key; every device key is refused" in hub.log()
