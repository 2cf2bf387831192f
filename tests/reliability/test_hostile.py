"""Hostile input against the real hub subprocess: never a 5xx for a client's fault, never a crash, memory
bounded, stored data unchanged, and other devices still served.

Goes beyond tests/test_fuzz_ingest.py: mutated real events (every field in every JSON type), truncated
and corrupt gzip, gzip and JSON bombs, deep nesting, huge numbers, invalid UTF-8 and lone surrogates,
header abuse on raw sockets, slow clients (slowloris), connection floods with large bodies; and the
Share Telemetry file reader / importer fed mutated archives.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import http.client
import json
import logging
import random
import resource
import socket
import sqlite3
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.events import _SAMPLES, make_events, mobile_request
from support.hubproc import HubProcess
from support.hubs import write_config
from support.sharefiles import (
    build_archive,
    build_gsa,
    event_bytes,
    gzip_zeros,
)

from reliability import tally
from reliability.helpers import (
    PATH,
    Ledger,
    device,
    duplicate_rows,
    fd_count,
    percentile,
    proc_status,
)

CLIENT_TIMEOUT = 3.0
MAX_CONNECTIONS = 300
MAX_BUFFERED = 24 * 2**20
MiB = 2**20


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cfg = write_config(
        tmp / "hub.toml",
        server={"client_timeout": CLIENT_TIMEOUT, "max_connections": MAX_CONNECTIONS},
        limits={"max_buffered_bytes": MAX_BUFFERED},
        store={"min_free_bytes": "1 MiB"},
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the flood test opens ~2,300 sockets
    with HubProcess(tmp / "data", config=cfg) as h:
        yield h
    # Whatever was thrown at it, the store holds each mid in one row.
    assert not duplicate_rows(h.data_dir / "hub.db")
    # No traceback but aiohttp's own for malformed HTTP (it logs those at ERROR; see the report).
    for block in h.log_path.read_text().split("Traceback (most recent call last):")[1:]:
        last = next(line for line in block.splitlines()[1:] if line and not line.startswith(" "))
        assert last.startswith("aiohttp.http_exceptions."), block[-3000:]


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs resets the peak RSS), so a test measures its own peak."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


# ---- helpers ---------------------------------------------------------------------------------------------------


def db_fingerprint(hub: HubProcess) -> tuple[int, int, int, int]:
    """(rows, max seq, total raw bytes, quarantine rows): what must not change unless a 200 adds to it."""
    con = sqlite3.connect(hub.data_dir / "hub.db", timeout=30)
    try:
        n, top, size = con.execute(
            "SELECT count(*), coalesce(max(seq), 0), coalesce(sum(length(raw)), 0) FROM stored_events"
        ).fetchone()
        (q,) = con.execute("SELECT count(*) FROM quarantine").fetchone()
    finally:
        con.close()
    return n, top, size, q


def rows_after(hub: HubProcess, seq: int) -> list[tuple[str, bytes]]:
    con = sqlite3.connect(hub.data_dir / "hub.db", timeout=30)
    try:
        return con.execute("SELECT mid, raw FROM stored_events WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
    finally:
        con.close()


def unchanged_before(hub: HubProcess, before: tuple[int, int, int, int]) -> bool:
    con = sqlite3.connect(hub.data_dir / "hub.db", timeout=30)
    try:
        n, size = con.execute(
            "SELECT count(*), coalesce(sum(length(raw)), 0) FROM stored_events WHERE seq <= ?", (before[1],)
        ).fetchone()
    finally:
        con.close()
    return (n, size) == (before[0], before[2])


def post(hub: HubProcess, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=60)
    try:
        conn.request("POST", PATH, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def decoded(body: bytes, encoding: str | None) -> bytes:
    """The request body as the hub inflates it for this Content-Encoding (only the ones it answers 200 to)."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body)
    if enc == "deflate":
        return zlib.decompressobj().decompress(body)
    raise AssertionError(f"the hub answered 200 to Content-Encoding {encoding!r}, which it does not support")


def count_answer(status: int, headers: dict[str, str] | None = None) -> None:
    """Tally one answer to a hostile request: a 5xx is the hub's failure, except 503 + Retry-After (overload)."""
    tally.add(fuzz_cases=1)
    if status >= 500 and not (status == 503 and headers and "Retry-After" in headers):
        tally.add(client_fault_5xx=1)


def still_serves(hub: HubProcess) -> None:
    body, headers = mobile_request(make_events(1))
    status, answer, _ = post(hub, body, headers)
    assert status == 200, answer[:300]


def raw_exchange(
    port: int, data: bytes, *, wait: float = 10.0, linger: float | None = None
) -> tuple[int | None, bytes]:
    """Send raw bytes, return (status of the first answer or None if the hub closed without one, answer head)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    got = b""
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the hub may refuse before the client has finished; its answer may still be there
        if linger is not None:
            time.sleep(linger)
        while b"\r\n\r\n" not in got:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    if not got.startswith(b"HTTP/1."):
        return None, got[:200]
    return int(got.split(b" ", 2)[1]), got[:400]


# ---- strategies ------------------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=15
)

REAL = [e for e in _SAMPLES[:12]]


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            if len(prefix) < 3:
                out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:2]):
            out.append(prefix + (i,))
            if len(prefix) < 3:
                out += _paths(v, prefix + (i,))
    return out


def _set(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated_event_bodies(draw) -> bytes:
    """A mobile envelope of real events, one field of some of them replaced by an arbitrary JSON value."""
    events = []
    for _ in range(draw(st.integers(1, 4))):
        e = copy.deepcopy(draw(st.sampled_from(REAL)))
        e["mid"] = f"fz-{uuid.uuid4().hex}"
        if draw(st.booleans()):
            e = _set(e, draw(st.sampled_from(_paths(e))), draw(json_value))
        events.append(e)
    return _compact({"id": "ekstep.telemetry", "ver": "1.0", "params": {"msgid": str(uuid.uuid4())}, "events": events})


def _nested(depth: int, where: str) -> bytes:
    inner = b"[" * depth + b"]" * depth
    if where == "event":
        return b'{"events":[{"mid":"deep-%d-%s","eid":"LOG","ets":1,"edata":%s}]}' % (
            depth,
            uuid.uuid4().hex.encode(),
            inner,
        )
    if where == "envelope":
        return b'{"params":' + inner + b',"events":[]}'
    return b'{"events":[' + inner + b"]}"


_BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\xef\xbb\xbf"]
_ESCAPES = [b"\\ud800", b"\\udfff", b"\\ud83d", b"\\u0000", b"\\uffff", b"\\ud800\\ud800"]


def _text_abuse(which: int, blob: bytes, field: str) -> bytes:
    mid = f"utf-{uuid.uuid4().hex}".encode()
    value = b'"' + blob + b'"'
    fields = {"mid": b'"' + mid + b'"', "eid": b'"LOG"', "ets": b"1", "did": b'"d"'}
    fields[field] = value if field != "mid" else b'"' + mid + blob + b'"'
    ctx = b'{"did":' + fields["did"] + b',"channel":' + (value if which % 2 else b'"c"') + b"}"
    event = (
        b'{"mid":'
        + fields["mid"]
        + b',"eid":'
        + fields["eid"]
        + b',"ets":'
        + fields["ets"]
        + b',"context":'
        + ctx
        + b"}"
    )
    return b'{"events":[' + event + b"]}"


huge_numbers = st.sampled_from(
    [
        b"1e999",
        b"-1e999",
        b"1e-999",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"18446744073709551616",
        b"1" * 4000,
        b"1" * 5000,
        b"0." + b"0" * 5000 + b"1",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1E400",
        b"-0",
        b"0e0",
    ]
)


def _gzip_bomb(size_mib: int) -> bytes:
    return gzip_zeros(size_mib * MiB)


def _json_bomb(kind: bytes) -> bytes:
    n = (9 * MiB) // len(kind)
    return gzip.compress(b'{"events":[' + kind * (n - 1) + kind.rstrip(b",") + b"]}", 6)


bodies = st.one_of(
    mutated_event_bodies().map(lambda b: (b, None)),
    mutated_event_bodies().map(lambda b: (gzip.compress(b), "gzip")),
    st.tuples(mutated_event_bodies(), st.integers(1, 400)).map(lambda t: (gzip.compress(t[0])[: -t[1]], "gzip")),
    st.tuples(mutated_event_bodies(), st.integers(0, 10_000), st.integers(0, 255)).map(
        lambda t: (_flip(gzip.compress(t[0]), t[1], t[2]), "gzip")
    ),
    mutated_event_bodies().map(lambda b: (zlib.compress(b), "deflate")),
    mutated_event_bodies().map(lambda b: (gzip.compress(b) + b"trailing junk", "gzip")),
    mutated_event_bodies().map(lambda b: (b, "gzip")),  # says gzip, is plain
    st.sampled_from([1, 50, 254, 255, 256, 900, 1000, 1025, 5000, 100_000]).flatmap(
        lambda d: st.sampled_from(["event", "envelope", "events"]).map(lambda w: (_nested(d, w), None))
    ),
    st.tuples(st.sampled_from(_BAD_UTF8 + _ESCAPES), st.sampled_from(["mid", "eid", "did"]), st.integers(0, 1)).map(
        lambda t: (_text_abuse(t[2], t[0], t[1]), None)
    ),
    huge_numbers.map(
        lambda n: (b'{"events":[{"mid":"num-%s","eid":"LOG","ets":%s}]}' % (uuid.uuid4().hex.encode(), n), None)
    ),
    huge_numbers.map(lambda n: (b'{"events":[],"params":{"msgid":%s}}' % n, None)),
    st.binary(max_size=300).map(lambda b: (b, None)),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"[]",
            b"null",
            b'{"events":{}}',
            b'{"events":"x"}',
            b'{"events":[]}',
            b'{"events":null}',
            b'{"events":[1,2,3]}',
            b'{"events":[{}]}',
            b'{"events":[],"events":[]}',
            b'\xef\xbb\xbf{"events":[]}',
            b'{"events":[{"mid":"a","eid":"b","ets":1}]]',
            b'{"events":[{"mid":"a","eid":"b","ets":1}]} {}',
        ]
    ).map(lambda b: (b, None)),
)


def _flip(data: bytes, at: int, value: int) -> bytes:
    if not data:
        return data
    i = at % len(data)
    return data[:i] + bytes([value]) + data[i + 1 :]


# ---- the device API --------------------------------------------------------------------------------------------

FUZZ_CASES = 250


@pytest.mark.slow
@settings(
    max_examples=FUZZ_CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(case=bodies, encoding=st.sampled_from([None, None, "identity", "br", "gzip, gzip", "x-gzip", "GZIP", "zstd"]))
def test_fuzz_device_api(hub, case, encoding):
    body, natural = case
    enc = natural if natural is not None and encoding in (None, "identity") else encoding
    headers = {"Content-Encoding": enc} if enc else {}
    before = db_fingerprint(hub)
    status, answer, rheaders = post(hub, body, headers)
    count_answer(status, rheaders)
    assert status < 500, (status, answer[:300])
    doc = json.loads(answer)
    assert doc["id"] == "api.telemetry"
    assert unchanged_before(hub, before), "stored events changed"
    if status == 200:
        r = doc["result"]
        assert r["received"] == r["accepted"] + r["duplicates"] + len(r["quarantined"])
        sent = decoded(body, enc)  # what the hub read: the body after the Content-Encoding it accepted
        for mid, raw in rows_after(hub, before[1]):
            assert raw in sent, f"event {mid!r}: the stored bytes are not in the request"  # stored as sent
    else:
        assert doc["params"]["status"] == "failed" and doc["params"]["errmsg"]
        assert db_fingerprint(hub) == before


@pytest.mark.slow
def test_gzip_and_json_bombs_are_cut_off_cheaply(hub):
    """Small on the wire, huge inflated: refused with 413 while streaming, memory stays bounded."""
    pid = hub.proc.pid
    reset_peak(pid)
    for body in (
        _gzip_bomb(64),
        _gzip_bomb(1024),
        _json_bomb(b"1,"),
        _json_bomb(b"{},"),
        _json_bomb(b"[],"),
        _json_bomb(b'"",'),
        _json_bomb(b'{"mid":"x","eid":"y","ets":1},'),
    ):
        before = db_fingerprint(hub)
        started = time.monotonic()
        status, answer, rheaders = post(hub, body, {"Content-Encoding": "gzip"})
        count_answer(status, rheaders)
        assert status == 413, (status, answer[:300])
        assert time.monotonic() - started < 10
        assert db_fingerprint(hub) == before
    hwm = proc_status(pid, "VmHWM") // 1024
    # 10 MiB inflated at most (limits.max_decompressed_bytes); the parse of the worst (3.5M empty objects)
    # costs ~300 MiB for a moment. Before the fix, 9 MiB of "1," took 21 GiB.
    assert hwm < 600, f"hub peaked at {hwm} MiB"
    still_serves(hub)
    tally.add(fault_scenarios=1)


JSON_TYPES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    10**30,
    1.5,
    1e308,
    -1e-300,
    "",
    "x",
    "\u0000",
    "\ud800",
    [],
    [1, "a", None],
    {},
    {"k": {"k": []}},
]


def test_every_field_of_real_events_in_every_json_type(hub):
    """Each field (to depth 3) of real events of several kinds, set to each JSON type: 200, stored as sent
    or quarantined with a reason, never a 5xx."""
    seen: dict[str, Any] = {}
    for e in _SAMPLES:
        seen.setdefault(e["eid"], e)
    cases = []
    for e in seen.values():
        for path in _paths(e):
            for value in JSON_TYPES:
                m = _set(e, path, value)
                if path != ("mid",):
                    m["mid"] = f"types-{uuid.uuid4().hex}"
                cases.append(m)
    sent: dict[str, bytes] = {}
    for start in range(0, len(cases), 500):
        chunk = cases[start : start + 500]
        raws = [json.dumps(c, separators=(",", ":")).encode() for c in chunk]  # \ud800 as JSON.stringify writes it
        body = b'{"id":"api.sunbird.telemetry","ver":"3.0","events":[' + b",".join(raws) + b"]}"
        status, answer, rheaders = post(hub, gzip.compress(body), {"Content-Encoding": "gzip"})
        count_answer(status, rheaders)
        assert status == 200, answer[:300]
        r = json.loads(answer)["result"]
        assert r["received"] == len(chunk) == r["accepted"] + r["duplicates"] + len(r["quarantined"])
        quarantined = {q["index"] for q in r["quarantined"]}
        for i, (c, raw) in enumerate(zip(chunk, raws)):
            if i not in quarantined:
                sent[c["mid"]] = raw
            else:
                mid, eid, ets = c.get("mid"), c.get("eid"), c.get("ets")
                # A mid with a lone surrogate cannot serve as the event's identity (two would collide
                # once stored), so the hub keeps such events in quarantine rather than guess.
                unicode_mid = isinstance(mid, str) and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in mid)
                assert not (
                    unicode_mid
                    and mid
                    and isinstance(eid, str)
                    and isinstance(ets, (int, float))
                    and not isinstance(ets, bool)
                ), (c, r["quarantined"])
    con = sqlite3.connect(hub.data_dir / "hub.db", timeout=30)
    try:
        stored = dict(con.execute("SELECT mid, raw FROM stored_events WHERE mid LIKE 'types-%'"))
    finally:
        con.close()
    wrong = [m for m, raw in sent.items() if m.startswith("types-") and stored.get(m) != raw]
    assert not wrong, f"{len(wrong)} events not stored byte for byte, e.g. {wrong[:3]}"
    tally.add(fuzz_cases=len(cases) - len(range(0, len(cases), 500)))
    still_serves(hub)


# ---- headers and the wire ----------------------------------------------------------------------------------------


def _req(headers: bytes, body: bytes = b"", method: bytes = b"POST", path: bytes = PATH.encode()) -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body


_OK_BODY = b'{"events":[{"mid":"wire-%s","eid":"LOG","ets":1}]}'


def _ok() -> bytes:
    return _OK_BODY % uuid.uuid4().hex.encode()


WIRE_CASES: list[tuple[str, bytes]] = [
    ("huge header value", _req(b"X-Junk: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n", b"{}")),
    ("huge header name", _req(b"X" * 20_000 + b": 1\r\nContent-Length: 2\r\n", b"{}")),
    ("300 headers", _req(b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"Content-Length: 2\r\n", b"{}")),
    ("long url", _req(b"Content-Length: 2\r\n", b"{}", path=b"/" + b"a" * 100_000)),
    ("content-length abc", _req(b"Content-Length: abc\r\n", b"{}")),
    ("content-length negative", _req(b"Content-Length: -1\r\n", b"{}")),
    ("content-length float", _req(b"Content-Length: 1e3\r\n", b"{}")),
    ("content-length huge", _req(b"Content-Length: 99999999999999999999999\r\n", b"{}")),
    ("two content-lengths", _req(b"Content-Length: 2\r\nContent-Length: 5\r\n", b"{}")),
    (
        "content-length and chunked",
        _req(b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"),
    ),
    ("bad chunk size", _req(b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n")),
    ("huge chunk size", _req(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\n{}\r\n0\r\n\r\n")),
    (
        "chunked over the body limit",
        _req(b"Transfer-Encoding: chunked\r\n", (b"100000\r\n" + b" " * 0x100000 + b"\r\n") * 6 + b"0\r\n\r\n"),
    ),
    ("transfer-encoding gzip", _req(b"Transfer-Encoding: gzip\r\n", b"{}")),
    ("content-length shorter than body", _req(b"Content-Length: 10\r\n", _ok())),
    ("content-length over the limit, no body", _req(b"Content-Length: 104857600\r\n", b"")),
    ("expect 100-continue over the limit", _req(b"Expect: 100-continue\r\nContent-Length: 104857600\r\n", b"")),
    ("wrong content-encoding", _req(b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(_ok()), _ok())),
    ("unknown content-encoding", _req(b"Content-Encoding: br\r\nContent-Length: %d\r\n" % len(_ok()), _ok())),
    ("stacked content-encoding", _req(b"Content-Encoding: gzip, gzip\r\nContent-Length: 2\r\n", b"{}")),
    ("content-type nonsense", _req(b"Content-Type: \xff\xfe/\x00\r\nContent-Length: 2\r\n", b"{}")),
    ("non-utf8 device id", _req(b"X-Device-Id: \xff\xfe\xed\xa0\x80\r\nContent-Length: %d\r\n" % len(_ok()), _ok())),
    ("control chars in header", _req(b"X-Device-Id: a\x01\x7fb\r\nContent-Length: 2\r\n", b"{}")),
    ("authorization abuse", _req(b"Authorization: Bearer " + b"\xff" * 5000 + b"\r\nContent-Length: 2\r\n", b"{}")),
    ("no host, http/1.0", b"POST " + PATH.encode() + b" HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}"),
    ("bad method", _req(b"Content-Length: 2\r\n", b"{}", method=b"F\x00O")),
    ("unknown method", _req(b"Content-Length: 2\r\n", b"{}", method=b"BREW")),
    ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("tls hello", bytes.fromhex("160301020001000200") + b"\x00" * 200),
    ("bare newlines", b"POST " + PATH.encode() + b" HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}"),
    ("header folding", _req(b"X-A: 1\r\n  folded\r\nContent-Length: 2\r\n", b"{}")),
    ("pipelined junk", _req(b"Content-Length: 2\r\n", b"{}") + b"\x00" * 5000),
]


@pytest.mark.parametrize("name,data", WIRE_CASES, ids=[c[0] for c in WIRE_CASES])
def test_header_and_wire_abuse(hub, name, data):
    before = db_fingerprint(hub)
    status, head = raw_exchange(hub.port, data)
    tally.add(fuzz_cases=1)
    if status is not None and status >= 500:
        tally.add(client_fault_5xx=1)
    assert status is None or status < 500, (name, head)
    assert unchanged_before(hub, before)
    still_serves(hub)


def _stall(hub: HubProcess, data: bytes) -> tuple[bytes, float]:
    """Send a request whose body never completes; return everything the hub answered before closing, and when."""
    s = socket.create_connection(("127.0.0.1", hub.port), timeout=CLIENT_TIMEOUT + 10)
    started = time.monotonic()
    try:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    finally:
        s.close()
    return answer, time.monotonic() - started


@pytest.mark.slow
def test_body_shorter_than_content_length_times_out(hub):
    """A body that stops arriving gets 408 within server.client_timeout, and the connection is closed."""
    answer, took = _stall(hub, _req(b"Content-Length: 5000\r\n", b'{"events":['))
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert CLIENT_TIMEOUT - 0.5 < took < CLIENT_TIMEOUT + 2, took
    tally.add(fuzz_cases=1)


@pytest.mark.slow
def test_upload_that_stalls_is_cut_off(hub):
    """A Share Telemetry upload whose bytes stop arriving gets 408 within server.client_timeout; nothing imported."""
    token = (hub.data_dir / "admin-token").read_text().strip()

    def imports() -> int:
        con = sqlite3.connect(hub.data_dir / "hub.db", timeout=30)
        try:
            return con.execute("SELECT count(*) FROM imports").fetchone()[0]
        finally:
            con.close()

    before = imports()
    head = (
        b'--b\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
        + token.encode()
        + b'\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
        b"Content-Type: application/zip\r\n\r\nPK\x03\x04"
    )
    answer, took = _stall(
        hub,
        _req(
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\nAccept: application/json\r\n",
            head,
            path=b"/admin/import",
        ),
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"stopped arriving" in answer
    assert CLIENT_TIMEOUT - 0.5 < took < CLIENT_TIMEOUT + 2, took
    assert imports() == before
    assert not list((hub.data_dir / "uploads").glob(".upload-*"))  # the partial file is gone
    tally.add(fuzz_cases=1)
    still_serves(hub)


# ---- slow clients and floods ---------------------------------------------------------------------------------------


async def _trickle(port: int, head: bytes, rest: bytes, outcome: list[tuple[float, bytes]]) -> None:
    """Send `head` at once, then `rest` one byte a second; note when the hub closed the connection and what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    got = b""
    try:
        writer.write(head)
        await writer.drain()
        for byte in rest:
            try:
                got += await asyncio.wait_for(reader.read(4096), 1.0)
                if reader.at_eof():
                    break
            except TimeoutError:
                pass
            writer.write(bytes([byte]))
            await writer.drain()
        else:
            got += await asyncio.wait_for(reader.read(4096), 60)
    except (ConnectionError, OSError):
        pass
    finally:
        outcome.append((time.monotonic() - started, got[:100]))
        writer.close()


@pytest.mark.slow
async def test_slowloris_is_bounded_and_does_not_starve_devices(hub):
    """50 connections sending one byte a second: each is closed within server.client_timeout (plus a little),
    while normal devices keep getting their 200s fast."""
    body = b'{"events":[' + b" " * 200 + b"]}"
    slow: list[tuple[float, bytes]] = []
    tricklers = []
    for i in range(50):
        kind = i % 5
        if kind in (0, 1):  # headers never finish
            head, rest = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: " + b"a" * 60
        elif kind in (2, 3):  # device body trickles
            head, rest = _req(b"Content-Length: %d\r\n" % len(body)), body
        else:  # a form body trickles to /login (no token needed to start it)
            head = _req(b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60\r\n", path=b"/login")
            rest = b"token=" + b"x" * 54
        tricklers.append(asyncio.create_task(_trickle(hub.port, head, rest, slow)))
    ledger, stop = Ledger(), asyncio.Event()
    async with aiohttp.ClientSession() as http:
        devices = [
            asyncio.create_task(
                device(
                    http,
                    hub.url,
                    f"fast-{i}",
                    ledger,
                    stop,
                    random.Random(i),
                    sizes=(1, 10, 50),
                    pause=0.05,
                    timeout=10,
                )
            )
            for i in range(4)
        ]
        await asyncio.sleep(CLIENT_TIMEOUT + 3)
        stop.set()
        await asyncio.gather(*devices)
    await asyncio.wait_for(asyncio.gather(*tricklers), 30)
    tally.add(fault_scenarios=1, fuzz_cases=50)
    too_long = [(round(t, 1), got) for t, got in slow if t > CLIENT_TIMEOUT + 2.5]
    assert not too_long, f"{len(too_long)} of 50 slow connections outlived server.client_timeout: {too_long[:5]}"
    assert not ledger.unexpected and ledger.statuses[200] > 20, (dict(ledger.statuses), ledger.unexpected[:3])
    p99 = percentile(ledger.latencies, 99)
    assert p99 < 1.0, f"devices waited up to {p99:.2f}s (p99) while slow clients trickled"
    print(
        f"slowloris: 50 slow connections closed after {min(t for t, _ in slow):.1f}-{max(t for t, _ in slow):.1f}s; "
        f"devices {dict(ledger.statuses)}, p50 {percentile(ledger.latencies, 50) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )


@pytest.mark.slow
async def test_connection_flood_and_large_requests_stay_bounded(hub):
    """2,000 idle sockets plus 200 concurrent ~1 MB requests: connections capped at server.max_connections,
    bodies in memory capped at limits.max_buffered_bytes (503 + Retry-After beyond), RSS bounded, nothing lost."""
    pid = hub.proc.pid
    reset_peak(pid)
    idle: list[socket.socket] = []
    n_idle = max(0, min(2000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 600))  # what this process may open
    try:
        for i in range(n_idle):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", hub.port))
            idle.append(s)
        await asyncio.sleep(1.0)
        for s in idle[::2]:  # half of them start a request and stall
            try:
                s.send(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
        # Connections over the cap are closed as they come; an accept burst can run ahead of those
        # closes for a moment on a loaded machine, so the bound must hold once the loop has caught up.
        seen = []
        for _ in range(20):
            await asyncio.sleep(0.25)
            seen.append(fd_count(pid))
            if seen[-1] < MAX_CONNECTIONS + 80:
                break
        assert seen[-1] < MAX_CONNECTIONS + 80, (
            f"the hub holds {seen[-1]} file descriptors with a limit of {MAX_CONNECTIONS} (seen over 5 s: {seen})"
        )
        template = json.dumps(make_events(1000), separators=(",", ":")).encode()
        ledger = Ledger()
        statuses: dict[Any, int] = {}

        async def big(k: int, http: aiohttp.ClientSession) -> None:
            tag = f"big{k}-".encode()
            events = template.replace(b'"mid":"', b'"mid":"' + tag)
            mids = [m.decode() for m in _mids(events)]
            body = b'{"id":"api.sunbird.telemetry","ver":"3.0","events":' + events + b"}"
            for attempt in range(20):
                try:
                    async with http.post(
                        hub.url + PATH,
                        data=body,
                        headers={"Content-Type": "application/json"},
                        timeout=aiohttp.ClientTimeout(total=60),
                    ) as r:
                        await r.read()
                        key: Any = r.status
                        if r.status == 503:
                            assert r.headers.get("Retry-After"), "503 without Retry-After"
                        count_answer(r.status, dict(r.headers))
                except (TimeoutError, aiohttp.ClientError) as exc:
                    key = type(exc).__name__  # turned away at the connection limit
                statuses[key] = statuses.get(key, 0) + 1
                if key == 200:
                    ledger.acked.update(mids)
                    return
                assert key == 503 or isinstance(key, str), key
                await asyncio.sleep(0.5 + random.random())

        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(big(k, http) for k in range(200)))
        hwm = proc_status(pid, "VmHWM") // 1024
        fds = fd_count(pid)
    finally:
        for s in idle:
            s.close()
    con = sqlite3.connect(hub.data_dir / "hub.db", timeout=30)
    stored = {m for (m,) in con.execute("SELECT mid FROM events WHERE mid LIKE 'big%'")}
    con.close()
    missing = ledger.acked - stored
    tally.add(fault_scenarios=1, acked_checked=len(ledger.acked), lost_events=len(missing))
    assert not missing
    assert statuses.get(200, 0) == 200, f"not every large request got through in the end: {statuses}"
    assert statuses.get(503, 0) > 0, f"limits.max_buffered_bytes never pushed back: {statuses}"
    assert hwm < 800, f"the hub peaked at {hwm} MiB RSS"
    assert fds < MAX_CONNECTIONS + 80
    still_serves(hub)
    print(
        f"flood: {n_idle:,} idle sockets + 200 x {len(template) // 1024} KiB requests -> {statuses}; "
        f"peak RSS {hwm} MiB, {fds} fds after"
    )


def _mids(events: bytes) -> list[bytes]:
    out, pos = [], 0
    while (i := events.find(b'"mid":"', pos)) >= 0:
        j = events.index(b'"', i + 7)
        out.append(events[i + 7 : j])
        pos = j
    return out


# ---- share files -----------------------------------------------------------------------------------------------


def _valid_archives(tmp: Path) -> list[bytes]:
    out = []
    a = tmp / "a.zip"
    build_archive(a, [event_bytes(3), event_bytes(2)], style="mobile")
    out.append(a.read_bytes())
    build_archive(a, [event_bytes(4)], style="desktop")
    out.append(a.read_bytes())
    g = tmp / "g.gsa"
    build_gsa(g, [event_bytes(3)])
    out.append(g.read_bytes())
    g.unlink()
    out.append(gzip.compress(b"[" + b",".join(event_bytes(3)) + b"]"))
    out.append(b"\n".join(event_bytes(3)))
    return out


_MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "dup", "zero"]),
        st.integers(0, 2**20),
        st.integers(0, 255),
        st.integers(1, 64),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, ops: list[tuple[str, int, int, int]]) -> bytes:
    b = bytearray(data)
    for op, at, value, n in ops:
        if not b:
            break
        i = at % len(b)
        if op == "flip":
            b[i] = value
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = bytes([value]) * n
        elif op == "dup":
            b[i:i] = b[i : i + n]
        else:
            b[i : i + n] = bytes(len(b[i : i + n]))
    return bytes(b)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return _valid_archives(tmp_path_factory.mktemp("archives"))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(which=st.integers(0, 4), ops=_MUTATIONS)
def test_share_file_reader_fuzz(archives, tmp_path, which, ops, caplog):
    """Mutated valid share files: read_share_file returns or raises ShareFileError, never anything else,
    and never hits its own 'unexpected error' catch-all."""
    from hub.errors import ShareFileError
    from hub.share import ShareLimits, read_share_file

    path = tmp_path / f"mutant-{uuid.uuid4().hex}.bin"
    path.write_bytes(_mutate(archives[which], ops))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="hub.share"):
        try:
            read_share_file(path, ShareLimits(max_file_bytes=4 * MiB, max_uncompressed_bytes=16 * MiB))
        except ShareFileError:
            pass
    path.unlink()
    tally.add(fuzz_cases=1)
    internal = [r.getMessage() for r in caplog.records if "unexpected error" in r.getMessage()]
    assert not internal, internal


async def test_share_import_of_mutated_files_changes_nothing(start_hub, tmp_path, archives):
    """Through Importer.import_file on a real store: a refused file leaves the store exactly as it was."""
    from hub.schema import SchemaChecker
    from hub.share import Importer

    rh = await start_hub()
    h = rh.hub
    svc = Importer(h.store, h.cfg, schema=SchemaChecker())
    rng = random.Random()
    refused = 0
    for n in range(60):
        data = archives[n % len(archives)]
        ops = [
            (
                rng.choice(["flip", "cut", "insert", "dup", "zero"]),
                rng.randrange(len(data)),
                rng.randrange(256),
                rng.randint(1, 64),
            )
            for _ in range(rng.randint(1, 3))
        ]
        path = tmp_path / f"m{n}.zip"
        path.write_bytes(_mutate(data, ops))
        before = rh.rows("SELECT count(*), coalesce(sum(length(raw)), 0) FROM stored_events")
        before_imports = rh.rows("SELECT count(*) FROM imports")
        report = await svc.import_file(path)
        tally.add(fuzz_cases=1)
        if report.error:
            refused += 1
            assert rh.rows("SELECT count(*), coalesce(sum(length(raw)), 0) FROM stored_events") == before, report.error
            assert rh.rows("SELECT count(*) FROM imports") == before_imports
    assert refused > 10, "the mutations hardly ever broke a file: the fuzzing is too gentle"
