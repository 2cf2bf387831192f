"""Tests of the fake upstream itself: if it lies, every forwarder test built on it lies too."""

from __future__ import annotations

import asyncio
import gzip
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from support.upstream import FakeUpstream

KEY = "test-key"
# The upstream fixture (conftest.py) with a key to check and its own seed.
pytestmark = pytest.mark.upstream_options(key=KEY, seed=1)


def batch(mids: list[str], msgid: str = "msg-1") -> dict[str, Any]:
    """An envelope shaped like the hub's upstream request (mobile app style)."""
    events = [{"eid": "IMPRESSION", "mid": m, "ets": 1714558830000, "ver": "3.0"} for m in mids]
    return {
        "id": "ekstep.telemetry",
        "ver": "1.0",
        "ts": "2024-05-01T10:20:30Z",
        "params": {"did": "hub-1", "msgid": msgid, "key": "", "requesterId": ""},
        "mid": msgid,
        "events": events,
    }


def headers(key: str = KEY, gz: bool = True, ctype: str = "application/json") -> dict[str, str]:
    """Headers as the mobile app (and the hub) send them."""
    h = {
        "Authorization": f"Bearer {key}",
        "Content-Type": ctype,
        "X-Channel-Id": "chan",
        "X-App-Id": "hub.app",
        "X-Device-Id": "hub-1",
    }
    if gz:
        h["Content-Encoding"] = "gzip"
    return h


def gz_body(doc: dict[str, Any]) -> bytes:
    return gzip.compress(orjson.dumps(doc))


async def post(s: aiohttp.ClientSession, upstream: FakeUpstream, body: bytes, **hkw: Any) -> tuple[int, Any, Any]:
    """POST and return (status, parsed JSON body or text, headers)."""
    async with s.post(upstream.url, data=body, headers=headers(**hkw)) as r:
        text = await r.text()
        try:
            return r.status, orjson.loads(text), r.headers
        except orjson.JSONDecodeError:
            return r.status, text, r.headers


async def test_gzip_and_plain_bodies_are_recorded(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(http, upstream, gz_body(batch(["a", "b"], "m1")))
    assert status == 200
    assert doc["responseCode"] == "SUCCESS" and doc["params"] == {} and isinstance(doc["ets"], int)
    status, _, _ = await post(http, upstream, orjson.dumps(batch(["b", "c"], "m2")), gz=False)
    assert status == 200
    assert upstream.received_mids == ["a", "b", "b", "c"]
    assert upstream.mids == {"a", "b", "c"}
    assert [e["mid"] for e in upstream.events] == ["a", "b", "b", "c"]
    first, second = upstream.batches
    assert (first.msgid, first.mid, first.did, first.content_encoding, first.event_count) == (
        "m1",
        "m1",
        "hub-1",
        "gzip",
        2,
    )
    assert (first.channel_id, first.app_id, first.device_id) == ("chan", "hub.app", "hub-1")
    assert first.wire_bytes == len(gz_body(batch(["a", "b"], "m1")))
    assert second.content_encoding is None and second.mids == ["b", "c"]
    assert upstream.counters["by_status"] == {"200": 2}


async def test_other_path_and_charset_are_accepted(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    h = headers(ctype="application/json; charset=utf-8")
    async with http.post(upstream.base_url + "/v1/telemetry", data=gz_body(batch(["x"])), headers=h) as r:
        assert r.status == 200
    assert upstream.batches[0].path == "/v1/telemetry"


async def test_wrong_content_type_is_200_but_ignored(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(http, upstream, gz_body(batch(["a"])), ctype="text/plain")
    assert status == 200 and doc["responseCode"] == "SUCCESS"
    assert upstream.mids == set() and upstream.batches == []
    (ign,) = upstream.ignored_requests
    assert ign.content_type == "text/plain" and "not application/json" in ign.reason


async def test_record_events_false_keeps_only_mids(http: aiohttp.ClientSession) -> None:
    async with FakeUpstream(record_events=False) as upstream:
        async with http.post(upstream.url, data=gz_body(batch(["a"])), headers=headers()) as r:
            assert r.status == 200  # no key configured: any Authorization passes
        assert upstream.events == [] and upstream.received_mids == ["a"]


async def test_fail_rate_gives_500_and_records_nothing(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    upstream.fail_rate = 1.0
    status, doc, _ = await post(http, upstream, gz_body(batch(["a"])))
    assert status == 500
    assert doc["responseCode"] == "SERVER_ERROR" and doc["params"] == {"err": "Request failed"}
    assert upstream.mids == set() and upstream.batches == []


async def test_hang_times_the_client_out_and_records_nothing(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.hang_seconds = 3.0
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            upstream.url, data=gz_body(batch(["a"])), headers=headers(), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    for _ in range(200):  # the server sees the disconnect one loop turn or so later
        if upstream.abandoned:
            break
        await asyncio.sleep(0.01)
    assert upstream.mids == set() and upstream.abandoned == 1


async def test_hang_after_store_loses_only_the_ack(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    upstream.hang_seconds, upstream.hang_after_store = 3.0, True
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            upstream.url, data=gz_body(batch(["a"])), headers=headers(), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    assert upstream.mids == {"a"}


@pytest.mark.parametrize("after_store", [False, True])
async def test_reset_is_a_client_error(upstream: FakeUpstream, http: aiohttp.ClientSession, after_store: bool) -> None:
    upstream.reset_rate, upstream.reset_after_store = 1.0, after_store
    with pytest.raises(aiohttp.ClientError):
        await post(http, upstream, gz_body(batch(["a"])))
    assert upstream.resets == 1
    assert upstream.mids == ({"a"} if after_store else set())
    upstream.reset_faults()
    assert (await post(http, upstream, gz_body(batch(["b"]))))[0] == 200


@pytest.mark.parametrize("status", [429, 503])
async def test_rate_limit_then_success(upstream: FakeUpstream, http: aiohttp.ClientSession, status: int) -> None:
    upstream.rate_limit(2, retry_after=7, status=status)
    for _ in range(2):
        got, doc, hdrs = await post(http, upstream, gz_body(batch(["a"])))
        assert got == status and hdrs["Retry-After"] == "7" and "message" in doc
    assert upstream.mids == set()
    assert (await post(http, upstream, gz_body(batch(["a"]))))[0] == 200


async def test_401_until_the_key_changes(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(http, upstream, gz_body(batch(["a"])), key="old")
    assert (status, doc) == (401, {"message": "Unauthorized"})
    upstream.key = "old"
    assert (await post(http, upstream, gz_body(batch(["a"])), key="old"))[0] == 200
    assert (await post(http, upstream, gz_body(batch(["b"]))))[0] == 401


async def test_413_on_wire_size_and_on_inflated_size(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = gz_body(batch([f"m{i}" for i in range(50)]))
    upstream.max_wire_bytes = len(body) - 1
    status, doc, _ = await post(http, upstream, body)
    assert status == 413 and doc == {"message": "Request size limit exceeded"}  # Kong
    upstream.max_wire_bytes = len(body)
    upstream.max_json_bytes = 100  # body-parser's limit counts inflated bytes
    status, text, _ = await post(http, upstream, body)
    assert status == 413 and "Payload Too Large" in text  # Express HTML, not JSON
    assert upstream.mids == set()


async def test_bad_json_and_bad_gzip_are_express_400(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    assert (await post(http, upstream, b"{not json", gz=False))[0] == 400
    assert (await post(http, upstream, b"not gzip at all"))[0] == 400
    assert (await post(http, upstream, gz_body(batch(["a"]))[:-10]))[0] == 400  # truncated
    assert upstream.batches == []


async def test_reject_mids_names_them_and_records_nothing(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    upstream.reject_mids = {"bad1", "bad2"}
    status, doc, _ = await post(http, upstream, gz_body(batch(["ok", "bad2", "bad1"])))
    assert status == 400 and doc["responseCode"] == "CLIENT_ERROR"
    assert doc["params"]["err"] == "INVALID_EVENT" and doc["params"]["errmsg"] == "invalid events: bad2, bad1"
    assert upstream.mids == set() and upstream.batches == []
    assert (await post(http, upstream, gz_body(batch(["ok"]))))[0] == 200


async def test_down_refuses_then_up_on_the_same_port(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    assert (await post(http, upstream, gz_body(batch(["a"]))))[0] == 200  # leaves a keep-alive connection
    port = upstream.port
    await upstream.down()
    assert upstream.is_down
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, upstream, gz_body(batch(["b"])))
    await upstream.up()
    assert upstream.port == port and not upstream.is_down
    assert (await post(http, upstream, gz_body(batch(["c"]))))[0] == 200
    assert upstream.mids == {"a", "c"}


async def test_flap_toggles_and_ends_up(upstream: FakeUpstream) -> None:
    seen: set[bool] = set()
    upstream.flap(0.05, 0.05)
    for _ in range(30):
        seen.add(upstream.is_down)
        await asyncio.sleep(0.01)
    upstream.reset_faults()
    await asyncio.sleep(0.05)
    assert seen == {True, False} and not upstream.is_down


async def test_latency_delays_the_answer(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    upstream.latency = 0.2
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await post(http, upstream, gz_body(batch(["a"]))))[0] == 200
    assert loop.time() - t0 >= 0.19


async def test_health_and_probe_answers(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.get(upstream.base_url + "/health") as r:
        assert r.status == 200 and await r.json() == {"healthy": True}
    async with http.head(upstream.url, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 404  # Express has no GET/HEAD route on the telemetry path
    async with http.get(upstream.url) as r:
        assert r.status == 401  # Kong's auth answers first


async def test_wait_unique_and_idempotent_stop(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    waiter = asyncio.create_task(upstream.wait_unique(3, timeout=2))
    await post(http, upstream, gz_body(batch(["a", "b"])))
    assert not waiter.done()
    await post(http, upstream, gz_body(batch(["b", "c"])))
    await waiter
    await upstream.stop()
    await upstream.stop()
    assert upstream.mids == {"a", "b", "c"}


async def test_control_api_of_a_subprocess(http: aiohttp.ClientSession) -> None:
    script = Path(__file__).parent / "support" / "upstream.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--port", "0", "--control-port", "0", "--key", KEY, "--quiet",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        assert line[0] == "listening" and line[1].endswith("/api/data/v1/telemetry")
        url = line[1]
        control = (await proc.stdout.readline()).decode().split()[1]

        async def send(body: bytes) -> int:
            async with http.post(url, data=body, headers=headers()) as r:
                return r.status

        async def control_post(doc: dict[str, Any]) -> dict[str, Any]:
            async with http.post(control + "/_control", json=doc) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        state = await control_post({"fail_rate": 1.0, "reject_mids": ["z"]})
        assert state["faults"]["fail_rate"] == 1.0 and state["faults"]["reject_mids"] == ["z"]
        assert await send(gz_body(batch(["a"]))) == 500
        await control_post({"reset_faults": True, "rate_limit": {"count": 1, "retry_after": 3}})
        assert await send(gz_body(batch(["a"]))) == 429
        assert await send(gz_body(batch(["a", "b"]))) == 200
        await control_post({"down_for": 0.8})  # applied 50 ms after the answer
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientConnectionError):
            await send(gz_body(batch(["c"])))
        await asyncio.sleep(0.8)
        assert await send(gz_body(batch(["c"]))) == 200
        async with http.get(control + "/_state", params={"mids": "1"}) as r:
            state = await r.json()
        assert state["received"] == 3 and state["unique"] == 3 and sorted(state["mids"]) == ["a", "b", "c"]
        assert state["by_status"] == {"200": 2, "429": 1, "500": 1}
        async with http.post(control + "/_control", json={"no_such_fault": 1}) as r:
            assert r.status == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_attempts_and_redeliveries_are_recorded(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    """What the retry and duplicate checks read: every attempt (failed ones too) and mids stored twice."""
    upstream.fail_rate = 1.0
    assert (await post(http, upstream, gz_body(batch(["a", "b"], msgid="m1"))))[0] == 500
    upstream.fail_rate, upstream.reset_rate = 0.0, 1.0
    with pytest.raises(aiohttp.ClientError):
        await post(http, upstream, gz_body(batch(["a", "b"], msgid="m1")))
    upstream.reset_faults()
    assert (await post(http, upstream, gz_body(batch(["a", "b"], msgid="m1"))))[0] == 200
    assert (await post(http, upstream, gz_body(batch(["a", "b"], msgid="m1"))))[0] == 200  # a retry after a lost ack
    assert (await post(http, upstream, gz_body(batch(["b", "c"], msgid="m2"))))[0] == 200
    async with http.post(upstream.url, data=gz_body(batch(["x"])), headers=headers(key="wrong")) as r:
        assert r.status == 401
    assert [(a.status, a.msgid, a.mids) for a in upstream.attempts] == [
        (500, "m1", ["a", "b"]),
        (None, "m1", ["a", "b"]),
        (200, "m1", ["a", "b"]),
        (200, "m1", ["a", "b"]),
        (200, "m2", ["b", "c"]),
        (401, None, None),
    ]
    assert all(x.at <= y.at for x, y in zip(upstream.attempts, upstream.attempts[1:]))
    assert upstream.redelivered() == {"a": 2, "b": 3}
    assert upstream.foreign_redeliveries() == {"b": {"m1", "m2"}}
    assert upstream.changed_retries() == {}
    assert (await post(http, upstream, gz_body(batch(["a"], msgid="m1"))))[0] == 200
    assert upstream.changed_retries() == {"m1": [["a", "b"], ["a"]]}


async def test_up_right_after_reset_faults_ends_a_flap_while_down(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """reset_faults() lets the cancelled flap bring the link up; an up() at once must not race it for the port."""
    for _ in range(5):
        flapping = upstream.flap(0.05, 10.0)
        while not upstream.is_down:
            await asyncio.sleep(0.01)
        upstream.reset_faults()
        await asyncio.wait_for(upstream.up(), 0.5)  # losing the race meant ~1 s of EADDRINUSE retries, then OSError
        await asyncio.wait([flapping])
        assert flapping.cancelled() or flapping.exception() is None, flapping.exception()
        assert not upstream.is_down
        assert (await post(http, upstream, gz_body(batch(["a"]))))[0] == 200
