"""Hostile bodies thrown at a real hub subprocess: never a 5xx, never a crash, nothing changes."""

from __future__ import annotations

import gzip
import http.client
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.events import make_events, mobile_request
from support.hubproc import HubProcess

pytestmark = pytest.mark.slow  # hundreds of hypothesis cases against a subprocess hub

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20
)
event_like = st.fixed_dictionaries(
    {}, optional={"mid": json_value, "eid": json_value, "ets": json_value, "context": json_value, "edata": json_value}
)


def _gzip_mangle(data: bytes, cut: int) -> bytes:
    z = gzip.compress(data)
    return z[: max(0, len(z) - cut)]


bodies = st.one_of(
    st.binary(max_size=2000),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.lists(st.one_of(event_like, json_value), max_size=5).map(lambda evs: json.dumps({"events": evs}).encode()),
    st.tuples(st.binary(max_size=200), st.integers(0, 30)).map(lambda t: _gzip_mangle(t[0], t[1])),
    st.integers(1, 5000).map(lambda n: b'{"events":[' + b"[" * n + b"]" * n + b"]}"),
    st.integers(1, 10000).map(lambda n: b'{"events":[' + b"1" * n + b"]}"),
    st.binary(min_size=1, max_size=50).map(lambda b: b'{"events":["' + b + b'"]}'),
)
encodings = st.sampled_from([None, "gzip", "deflate", "br", "identity"])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with HubProcess(data) as h:
        yield h


def _post(hub: HubProcess, body: bytes, encoding: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    try:
        conn.request("POST", "/api/data/v1/telemetry", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _snapshot(hub: HubProcess) -> list[tuple]:
    con = sqlite3.connect(hub.data_dir / "hub.db")
    try:
        return con.execute("SELECT mid, raw FROM stored_events ORDER BY seq").fetchall()
    finally:
        con.close()


FUZZ_CASES = 300


@settings(
    max_examples=FUZZ_CASES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, encoding=encodings)
def test_hostile_bodies_never_5xx_and_change_nothing_valid(hub, body, encoding):
    before = _snapshot(hub)
    status, answer = _post(hub, body, encoding)
    assert status < 500, (status, answer[:300])
    doc = json.loads(answer)
    assert doc["id"] == "api.telemetry"
    if status == 200:
        # Only what the body really held as valid events may have been added; nothing old changed.
        after = _snapshot(hub)
        assert after[: len(before)] == before
    else:
        assert doc["params"]["status"] == "failed" and doc["params"]["errmsg"]
        assert _snapshot(hub) == before
    # The hub keeps serving valid data.
    ok_body, headers = mobile_request(make_events(1))
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    conn.request("POST", "/api/data/v1/telemetry", body=ok_body, headers=headers)
    assert conn.getresponse().status == 200
    conn.close()
