"""Realistic Sunbird telemetry for tests: real sample events and the three client envelopes."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # committed copies, see fixtures/README.md
SAMPLE_ZIP = FIXTURES / "desktop-telemetry-archive-telemetryimport1.zip"


def _compact(doc: Any) -> bytes:
    """JSON as JSON.stringify writes it (what real clients send)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def sample_events() -> list[dict[str, Any]]:
    """The 93 real desktop events of the sample archive in tests/fixtures/."""
    out: list[dict[str, Any]] = []
    with zipfile.ZipFile(SAMPLE_ZIP) as z:
        for name in sorted(z.namelist()):
            if name != "manifest.json":
                out.extend(json.loads(gzip.decompress(z.read(name)))["events"])
    return out


_SAMPLES = sample_events()


def make_events(
    n: int, *, did: str = "device-1", channel: str | None = None, pdata: str | None = None, prefix: str = ""
) -> list[dict[str, Any]]:
    """n distinct, schema-valid events shaped like the sample (about 1 KB each)."""
    out = []
    for i in range(n):
        e = copy.deepcopy(_SAMPLES[i % len(_SAMPLES)])
        e["mid"] = f"{prefix}{e['eid']}:{uuid.uuid4().hex}"
        e["ets"] = int(time.time() * 1000)
        e["context"]["did"] = did
        if channel is not None:
            e["context"]["channel"] = channel
        if pdata is not None:
            e["context"]["pdata"]["id"] = pdata
        out.append(e)
    return out


def mobile_request(events: list[dict[str, Any]], did: str = "device-1") -> tuple[bytes, dict[str, str]]:
    """What the Sunbird mobile app sends: gzip, ekstep envelope, its headers."""
    msgid = str(uuid.uuid4())
    env = {
        "id": "ekstep.telemetry",
        "ver": "1.0",
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "events": events,
        "params": {"did": did, "msgid": msgid, "key": "", "requesterId": ""},
    }
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Accept": "application/json",
        "X-Channel-Id": "channel-1",
        "X-App-Id": "prod.diksha.app",
        "X-Device-Id": did,
        "Authorization": "Bearer app-token",
    }
    return gzip.compress(_compact(env)), headers


def js_request(events: list[dict[str, Any]], token: str | None = None) -> tuple[bytes, dict[str, str]]:
    """What the telemetry JS library sends: plain JSON, md5 msgid, often no X-Device-Id."""
    msgid = hashlib.md5(json.dumps(events).encode()).hexdigest()
    env = {
        "id": "api.sunbird.telemetry",
        "ver": "3.0",
        "params": {"msgid": msgid},
        "ets": int(time.time() * 1000),
        "events": events,
    }
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token or ''}",
        "x-app-id": "prod.sunbird.portal",
        "x-channel-id": "channel-1",
    }
    return _compact(env), headers


def desktop_request(events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """What the desktop app / OpenRAP sends: no params, its own did/msgid headers."""
    env = {"ts": int(time.time() * 1000), "events": events, "id": "api.telemetry", "ver": "1.0"}
    return _compact(env), {"Content-Type": "application/json", "did": "desk-1", "msgid": str(uuid.uuid4())}
