"""The device API against a real hub on 127.0.0.1 with a real SQLite file."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import zlib

import pytest
from support.events import desktop_request, js_request, make_events, mobile_request, sample_events

PATHS = ["/api/data/v1/telemetry", "/v1/telemetry", "/content/data/v1/telemetry", "/action/data/v3/telemetry"]


async def post(http, hub, body: bytes, headers=None, path="/api/data/v1/telemetry"):
    async with http.post(hub.url + path, data=body, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None), r.headers


def stored(hub) -> dict[str, bytes]:
    return dict(hub.rows("SELECT mid, raw FROM stored_events"))


def assert_sunbird_error(body, status_err: str, fragment: str) -> None:
    assert body["params"]["status"] == "failed"
    assert body["params"]["err"] == status_err
    assert fragment in body["params"]["errmsg"], body["params"]["errmsg"]
    assert isinstance(body["ets"], int) and body["id"] == "api.telemetry"


async def test_the_hub_tells_devices_its_time_only_when_its_clock_is_good(start_hub, http):
    """The mobile app sets its clock from a 200's ets; an unsynchronised hub must not shift it (docs/monitoring.md)."""
    from hub.clock import read_kernel_clock

    for trust, expect in (("never", False), ("always", True), ("kernel", read_kernel_clock().synchronised is True)):
        hub = await start_hub(server={"clock_trust": trust})
        status, answer, _ = await post(http, hub, *mobile_request(make_events(2), did="phone-1"))
        assert status == 200 and answer["params"]["status"] == "successful", answer
        assert ("ets" in answer) is expect, (trust, answer)
        async with http.get(hub.url + "/health") as r:
            clock = (await r.json(content_type=None))["clock"]
        assert clock["ets_in_answers"] is expect and clock["trust"] == trust


async def test_mobile_gzip_batch_of_200_is_stored_verbatim(start_hub, http):
    hub = await start_hub(server={"clock_trust": "always"})  # ets whatever this machine's clock says
    events = make_events(200)
    body, headers = mobile_request(events, did="phone-7")
    status, answer, _ = await post(http, hub, body, headers)
    assert status == 200
    assert answer["params"]["status"] == "successful" and answer["responseCode"] == "SUCCESS"
    assert answer["params"]["msgid"] == json.loads(gzip.decompress(body))["params"]["msgid"]
    assert isinstance(answer["ets"], int) and answer["ts"].endswith("Z")
    assert answer["result"]["accepted"] == 200 and answer["result"]["duplicates"] == 0
    rows = stored(hub)
    # Byte for byte what the device sent: re-slice the original text of each event.
    sent_text = gzip.decompress(body).decode()
    for e in events:
        assert rows[e["mid"]].decode() in sent_text
        assert json.loads(rows[e["mid"]]) == e
    assert {d for (d,) in hub.rows("SELECT DISTINCT did FROM events")} == {"phone-7"}


async def test_raw_bytes_keep_odd_formatting(start_hub, http):
    hub = await start_hub()
    raw_event = '{ "eid" : "LOG",\n "ets":1.5e12, "mid":"odd-1", "x":"caf\\u00e9 ☕", "n": 1.0 }'
    body = ('{"events":[  ' + raw_event + '  ], "id":"api.telemetry"}').encode()
    status, _, _ = await post(http, hub, body, {"Content-Type": "application/json"})
    assert status == 200
    assert stored(hub)["odd-1"] == raw_event.encode()


async def test_js_library_without_token_or_device_header(start_hub, http):
    hub = await start_hub()
    events = make_events(20, did="browser-fp-1")
    body, headers = js_request(events)
    assert headers["Authorization"] == "Bearer "  # what the old library sends with no token
    status, answer, _ = await post(http, hub, body, headers)
    assert status == 200 and answer["result"]["accepted"] == 20
    assert answer["params"]["msgid"] == json.loads(body)["params"]["msgid"]
    # No X-Device-Id: the device comes from each event's context.did.
    assert hub.rows("SELECT DISTINCT did FROM events") == [("browser-fp-1",)]
    assert hub.rows("SELECT did, events FROM devices") == [("browser-fp-1", 20)]


@pytest.mark.parametrize("path", PATHS)
async def test_every_device_path_and_desktop_envelope(start_hub, http, path):
    hub = await start_hub()
    body, headers = desktop_request(make_events(3))
    status, answer, _ = await post(http, hub, body, headers, path)
    assert status == 200 and answer["result"]["accepted"] == 3
    assert answer["params"]["msgid"] is None
    assert len(stored(hub)) == 3


async def test_real_sample_events_are_all_accepted_without_warnings(start_hub, http):
    hub = await start_hub()
    body, headers = mobile_request(sample_events())
    status, answer, _ = await post(http, hub, body, headers)
    assert status == 200
    assert answer["result"] == {"received": 93, "accepted": 93, "duplicates": 0, "quarantined": [], "warnings": 0}


async def test_cors_preflight_and_headers(start_hub, http):
    hub = await start_hub()
    headers = {
        "Origin": "https://player.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-app-id,datatype",
    }
    async with http.options(hub.url + "/api/data/v1/telemetry", headers=headers) as r:
        assert r.status in (200, 204)
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert r.headers["Access-Control-Allow-Origin"] == "https://player.example"
    for h in (
        "authorization",
        "content-type",
        "content-encoding",
        "x-app-id",
        "x-channel-id",
        "x-device-id",
        "datatype",
    ):
        assert h in allowed
    body, hdrs = js_request(make_events(1))
    status, _, rh = await post(http, hub, body, {**hdrs, "Origin": "https://player.example"})
    assert status == 200 and rh["Access-Control-Allow-Origin"] == "https://player.example"
    status, _, rh = await post(http, hub, b"nope", {"Origin": "https://player.example"})
    assert status == 400 and "Access-Control-Allow-Origin" in rh


async def test_duplicates_are_stored_once_and_counted(start_hub, http):
    hub = await start_hub()
    events = make_events(10)
    body, headers = mobile_request(events)
    assert (await post(http, hub, body, headers))[0] == 200
    body2, headers2 = mobile_request(events[5:] + make_events(2) + events[:1])
    status, answer, _ = await post(http, hub, body2, headers2)
    assert status == 200
    assert answer["result"]["accepted"] == 2 and answer["result"]["duplicates"] == 6
    assert hub.rows("SELECT count(*) FROM events") == [(12,)]
    assert hub.rows("SELECT value FROM counters WHERE name='duplicates'") == [(6,)]


async def test_duplicates_across_insert_chunks_are_counted_per_request(start_hub, http):
    """Rows go to SQLite many per statement: the per-request counts must still be exact."""
    hub = await start_hub()
    first = make_events(150)
    body, headers = mobile_request(first)
    assert (await post(http, hub, body, headers))[0] == 200
    mixed = first[100:] + make_events(70) + first[:100] + first[:5]  # 70 new among 155 known, in 225 rows
    body, headers = mobile_request(mixed)
    status, answer, _ = await post(http, hub, body, headers)
    assert status == 200
    assert answer["result"]["accepted"] == 70 and answer["result"]["duplicates"] == 155
    assert hub.rows("SELECT count(*), count(DISTINCT mid) FROM events") == [(220, 220)]


BAD_BODIES = [
    (b"", {}, 400, "ERR_BAD_REQUEST", "empty"),
    (b"not json", {}, 400, "ERR_BAD_REQUEST", "not a JSON object"),
    (b'{"events": [1, 2', {}, 400, "ERR_BAD_REQUEST", "not valid JSON"),
    (b"[1,2]", {}, 400, "ERR_BAD_REQUEST", "not a JSON object"),
    (b'{"id":"x"}', {}, 400, "ERR_BAD_REQUEST", "no 'events' array"),
    (b'{"events":{"a":1}}', {}, 400, "ERR_BAD_REQUEST", "must be an array"),
    (b'{"events":[]}', {}, 400, "ERR_BAD_REQUEST", "'events' is empty"),
    (b'{"events":[{"mid":"a","eid":"X","ets":NaN}]}', {}, 400, "ERR_BAD_REQUEST", "NaN"),
    (b'{"events":["\xff\xfe"]}', {}, 400, "ERR_BAD_REQUEST", "UTF-8"),
    (b'{"events":[{"mid":"a","eid":"X","ets":1,"edata":{"x":"\xff"}}]}', {}, 400, "ERR_BAD_REQUEST", "UTF-8"),
    (b'{"events":[' + b"[" * 100000 + b"]" * 100000 + b"]}", {}, 400, "ERR_BAD_REQUEST", "nested too deeply"),
    (b'{"events":[]} x', {}, 400, "ERR_BAD_REQUEST", "extra data"),
    (b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}, 400, "ERR_BAD_REQUEST", "not valid gzip"),
    (
        gzip.compress(b'{"events":[{"mid":"a"}]}')[:-12],
        {"Content-Encoding": "gzip"},
        400,
        "ERR_BAD_REQUEST",
        "truncated gzip",
    ),
    (b'{"events":[{}]}', {"Content-Encoding": "br"}, 415, "ERR_UNSUPPORTED_MEDIA_TYPE", "not supported"),
]


async def test_unreadable_event_is_quarantined_and_the_rest_stored(start_hub, http):
    """A 50,000-digit number is JSON, but no decoder here reads it: kept aside with the reason, not a 400."""
    hub = await start_hub()
    events = make_events(2)
    body = (
        b'{"events":['
        + json.dumps(events[0]).encode()
        + b","
        + b"9" * 50000
        + b","
        + json.dumps(events[1]).encode()
        + b"]}"
    )
    status, answer, _ = await post(http, hub, body, {"Content-Type": "application/json"})
    assert status == 200
    assert answer["result"]["accepted"] == 2
    [q] = answer["result"]["quarantined"]
    assert q["index"] == 1 and "cannot be read as JSON" in q["reason"]
    # Kept aside bounded: a prefix (store.quarantine_keep_bytes), the real size and a hash of the bytes.
    [(kept, size, digest)] = hub.rows("SELECT raw, size, sha256 FROM quarantine")
    assert bytes(kept) == b"9" * 4096 and size == 50000 and digest == hashlib.sha256(b"9" * 50000).hexdigest()


@pytest.mark.parametrize("body,headers,status,err,fragment", BAD_BODIES)
async def test_bad_envelopes_get_clear_sunbird_errors(start_hub, http, body, headers, status, err, fragment):
    hub = await start_hub()
    ok_body, ok_headers = mobile_request(make_events(3))
    assert (await post(http, hub, ok_body, ok_headers))[0] == 200
    before = stored(hub)
    got, answer, _ = await post(http, hub, body, headers)
    assert got == status
    assert_sunbird_error(answer, err, fragment)
    assert stored(hub) == before


async def test_size_limits_give_413(start_hub, http):
    hub = await start_hub(
        limits={"max_body_bytes": 20000, "max_decompressed_bytes": 100000, "max_events_per_request": 50}
    )
    big = json.dumps({"events": make_events(40)}).encode()
    assert len(big) > 20000
    status, answer, _ = await post(http, hub, big)
    assert status == 413
    assert_sunbird_error(answer, "ERR_REQUEST_TOO_LARGE", "limits.max_body_bytes")
    # A gzip bomb: 1 GB of spaces after the events, 1 MB on the wire; cut off while streaming.
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = (
        comp.compress(b'{"events":[{"mid":"b","eid":"LOG","ets":1}]')
        + b"".join(comp.compress(b" " * 2**20) for _ in range(16))
        + comp.flush()
    )
    assert len(bomb) < 20000
    status, answer, _ = await post(http, hub, bomb, {"Content-Encoding": "gzip"})
    assert status == 413
    assert_sunbird_error(answer, "ERR_REQUEST_TOO_LARGE", "once decompressed")
    status, answer, _ = await post(http, hub, *mobile_request(make_events(51)))
    assert status == 413
    assert_sunbird_error(answer, "ERR_REQUEST_TOO_LARGE", "max_events_per_request")
    assert stored(hub) == {}


async def test_bad_events_are_quarantined_without_blocking_the_rest(start_hub, http):
    hub = await start_hub(limits={"max_event_bytes": 5000})
    good = make_events(3)
    huge = make_events(1)[0]
    huge["edata"]["message"] = "x" * 6000
    events = [
        good[0],
        "a string",
        {"eid": "LOG", "ets": 1},
        good[1],
        {"mid": "m", "eid": 5, "ets": 1},
        {"mid": "n", "eid": "LOG", "ets": "yesterday"},
        {"mid": "o", "eid": "LOG", "ets": True},
        huge,
        good[2],
    ]
    status, answer, _ = await post(http, hub, json.dumps({"events": events}).encode())
    assert status == 200
    q = answer["result"]["quarantined"]
    assert [x["index"] for x in q] == [1, 2, 4, 5, 6, 7]
    assert "not an object" in q[0]["reason"] and "mid" in q[1]["reason"] and "eid" in q[2]["reason"]
    assert "ets" in q[3]["reason"] and "ets" in q[4]["reason"] and "5000-byte limit" in q[5]["reason"]
    assert answer["result"]["accepted"] == 3
    assert set(stored(hub)) == {e["mid"] for e in good}
    rows = hub.rows("SELECT reason, raw FROM quarantine ORDER BY id")
    assert len(rows) == 6 and rows[0][1] == b'"a string"'


async def test_schema_violations_warn_by_default_and_quarantine_when_strict(start_hub, http, tmp_path):
    bad = make_events(2)
    bad[0]["edata"]["surprise"] = 1  # LOG edata has additionalProperties: false upstream
    hub = await start_hub()
    status, answer, _ = await post(http, hub, json.dumps({"events": bad}).encode())
    assert status == 200 and answer["result"]["accepted"] == 2 and answer["result"]["warnings"] == 1
    [warned] = answer["result"]["warning_reasons"]
    assert warned["count"] == 1 and "LOG" in warned["reason"]
    assert any("LOG" in k for k in hub.hub.store.stats.schema_warnings)
    await hub.hub.stop()

    strict = await start_hub(store={"strict_schema": True}, server={"data_dir": str(tmp_path / "strict")})
    status, answer, _ = await post(http, strict, json.dumps({"events": make_events(1) + bad[:1]}).encode())
    assert status == 200 and answer["result"]["accepted"] == 1
    assert "Sunbird v3 schema" in answer["result"]["quarantined"][0]["reason"]


async def test_api_key_required_when_configured(start_hub, http, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nkey-one\nkey-two\n")
    hub = await start_hub(auth={"device_keys_file": str(keys)})
    body, headers = mobile_request(make_events(2))
    for auth in (None, "Bearer ", "Bearer wrong", "Basic key-one", "key-one"):
        h = dict(headers)
        h.pop("Authorization")
        if auth is not None:
            h["Authorization"] = auth
        status, answer, _ = await post(http, hub, body, h)
        assert status == 401
        assert_sunbird_error(answer, "UNAUTHORIZED", "API key")
        assert "key-one" not in json.dumps(answer)
    assert stored(hub) == {}
    status, _, _ = await post(http, hub, body, {**headers, "Authorization": "Bearer key-two"})
    assert status == 200 and len(stored(hub)) == 2


async def test_store_cap_answers_503_with_retry_after_and_keeps_data(start_hub, http):
    hub = await start_hub(store={"max_bytes": 400_000, "retry_after": 17})
    accepted = set()
    refused = None
    for _ in range(40):
        events = make_events(50)
        status, answer, headers = await post(http, hub, *mobile_request(events))
        if status == 200:
            accepted |= {e["mid"] for e in events}
            continue
        refused = (status, answer, headers)
        break
    assert refused is not None, "the cap was never reached"
    status, answer, headers = refused
    assert status == 503 and headers["Retry-After"] == "17"
    assert_sunbird_error(answer, "ERR_SERVICE_UNAVAILABLE", "store.max_bytes")
    assert set(stored(hub)) == accepted  # everything acknowledged is there; nothing was dropped
    for _ in range(200):  # fill the last gap with single events until those are refused too
        events = make_events(1)
        status, _, _ = await post(http, hub, *mobile_request(events))
        if status != 200:
            break
        accepted.add(events[0]["mid"])
    assert status == 503 and set(stored(hub)) == accepted
    async with http.get(hub.url + "/health") as r:
        health = await r.json()
        assert r.status == 503 and not health["healthy"] and "store.max_bytes" in health["problems"][0]


async def test_concurrent_clients_share_commits(start_hub, http):
    hub = await start_hub()
    store = hub.hub.store
    commits_before = store.stats.commits

    async def client(i: int) -> int:
        n = 0
        for _ in range(10):
            status, _, _ = await post(http, hub, *js_request(make_events(1, did=f"d{i}")))
            n += status == 200
        return n

    ok = await asyncio.gather(*(client(i) for i in range(50)))
    assert sum(ok) == 500
    commits = store.stats.commits - commits_before
    assert commits < 500, f"{commits} commits for 500 requests: no group commit happened"
    assert hub.rows("SELECT count(*) FROM events") == [(500,)]
    assert hub.rows("SELECT count(*) FROM devices") == [(50,)]


async def test_health_reports_store_and_backlog(start_hub, http):
    hub = await start_hub()
    await post(http, hub, *mobile_request(make_events(5)))
    async with http.get(hub.url + "/health") as r:
        body = await r.json()
    assert r.status == 200 and body["healthy"] and body["store_writable"] and body["backlog"] == 5
    assert body["version"]


@pytest.mark.parametrize("mid", ["missing", None, ""], ids=["no-mid", "mid-null", "mid-empty"])
async def test_event_without_a_mid_is_quarantined_and_the_rest_stored(start_hub, http, mid):
    """A real event without a usable mid, as the mobile app sends it (gzip, its envelope): quarantined, never stored.

    Dedup, delivery and the upstream contract all hang on mid; the request's other events are stored.
    """
    hub = await start_hub()
    events = make_events(3)
    if mid == "missing":
        del events[1]["mid"]
    else:
        events[1]["mid"] = mid
    body, headers = mobile_request(events)
    async with http.post(hub.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
        status, text = r.status, await r.text()
    assert status == 200, text  # not a 500: the event must not reach the store's insert
    answer = json.loads(text)
    assert answer["result"]["accepted"] == 2
    [q] = answer["result"]["quarantined"]
    assert q["index"] == 1 and "'mid'" in q["reason"], q
    assert set(stored(hub)) == {events[0]["mid"], events[2]["mid"]}
    assert hub.rows("SELECT count(*) FROM events") == [(2,)]
    [(reason, raw, qmid)] = hub.rows("SELECT reason, raw, mid FROM quarantine")
    assert "'mid'" in reason and qmid == events[1].get("mid")
    assert json.loads(raw) == events[1]  # the event itself is kept aside, not lost
    async with http.get(hub.url + "/health") as r:
        health = await r.json()
    assert (health["quarantined"], health["stored_total"], health["backlog"]) == (1, 2, 2)


async def test_a_browser_opening_the_device_url_learns_what_it_is(start_hub, http) -> None:
    hub = await start_hub()
    for path in ("/api/data/v1/telemetry", "/v1/telemetry"):
        async with http.get(hub.url + path) as r:
            assert r.status == 405 and r.headers["Allow"] == "POST, OPTIONS"
            body = await r.json()
        assert "POST telemetry events here" in body["message"] and "status page" in body["message"]


@pytest.mark.slow
async def test_a_flood_of_malformed_events_keeps_the_store_small(start_hub, http) -> None:
    """600 KB of gzip that inflates to 1 MB events without a mid: kept aside as bounded prefixes, and real
    telemetry is still accepted afterwards."""
    hub = await start_hub()
    junk = {"eid": "LOG", "ets": 1, "ver": "3.0", "edata": {"message": "x" * 1_000_000}}  # no mid
    body = gzip.compress(json.dumps({"events": [junk] * 9}).encode(), 9)
    assert len(body) < 20_000
    size_before = sum(p.stat().st_size for p in hub.db_path.parent.glob("hub.db*"))
    sent = 0
    while sent < 600_000:
        status, answer, _ = await post(
            http, hub, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )
        assert status == 200 and len(answer["result"]["quarantined"]) == 9
        sent += len(body)
    [(count, kept, size)] = hub.rows("SELECT count(*), sum(length(raw)), sum(size) FROM quarantine")
    assert count >= 9 * 30 and kept <= count * 4096 and size >= count * 1_000_000
    grown = sum(p.stat().st_size for p in hub.db_path.parent.glob("hub.db*")) - size_before
    assert grown < 8 * 2**20, f"the store grew by {grown / 2**20:.1f} MiB for junk"
    status, answer, _ = await post(
        http, hub, json.dumps({"events": make_events(5)}).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200 and answer["result"]["accepted"] == 5
