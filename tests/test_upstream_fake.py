"""Tests of the fake upstream itself: if it lies, every forwarder test built on it lies too."""

from __future__ import annotations

import asyncio
import gzip
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from upstream import FakeUpstream

KEY = "test-key"
TIMEOUT = aiohttp.ClientTimeout(total=5)


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


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(key=KEY, seed=1) as f:
        yield f


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        yield s


async def post(s: aiohttp.ClientSession, fake: FakeUpstream, body: bytes, **hkw: Any) -> tuple[int, Any, Any]:
    """POST and return (status, parsed JSON body or text, headers)."""
    async with s.post(fake.url, data=body, headers=headers(**hkw)) as r:
        text = await r.text()
        try:
            return r.status, orjson.loads(text), r.headers
        except orjson.JSONDecodeError:
            return r.status, text, r.headers


async def test_gzip_and_plain_bodies_are_recorded(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(session, fake, gz_body(batch(["a", "b"], "m1")))
    assert status == 200
    assert doc["responseCode"] == "SUCCESS" and doc["params"] == {} and isinstance(doc["ets"], int)
    status, _, _ = await post(session, fake, orjson.dumps(batch(["b", "c"], "m2")), gz=False)
    assert status == 200
    assert fake.received_mids == ["a", "b", "b", "c"]
    assert fake.mids == {"a", "b", "c"}
    assert [e["mid"] for e in fake.events] == ["a", "b", "b", "c"]
    first, second = fake.batches
    assert (first.msgid, first.mid, first.did, first.content_encoding, first.event_count) == ("m1", "m1", "hub-1", "gzip", 2)
    assert (first.channel_id, first.app_id, first.device_id) == ("chan", "hub.app", "hub-1")
    assert first.wire_bytes == len(gz_body(batch(["a", "b"], "m1")))
    assert second.content_encoding is None and second.mids == ["b", "c"]
    assert fake.counters["by_status"] == {"200": 2}


async def test_other_path_and_charset_are_accepted(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    h = headers(ctype="application/json; charset=utf-8")
    async with session.post(fake.base_url + "/v1/telemetry", data=gz_body(batch(["x"])), headers=h) as r:
        assert r.status == 200
    assert fake.batches[0].path == "/v1/telemetry"


async def test_wrong_content_type_is_200_but_ignored(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(session, fake, gz_body(batch(["a"])), ctype="text/plain")
    assert status == 200 and doc["responseCode"] == "SUCCESS"
    assert fake.mids == set() and fake.batches == []
    (ign,) = fake.ignored_requests
    assert ign.content_type == "text/plain" and "not application/json" in ign.reason


async def test_record_events_false_keeps_only_mids(session: aiohttp.ClientSession) -> None:
    async with FakeUpstream(record_events=False) as fake:
        async with session.post(fake.url, data=gz_body(batch(["a"])), headers=headers()) as r:
            assert r.status == 200  # no key configured: any Authorization passes
        assert fake.events == [] and fake.received_mids == ["a"]


async def test_fail_rate_gives_500_and_records_nothing(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.fail_rate = 1.0
    status, doc, _ = await post(session, fake, gz_body(batch(["a"])))
    assert status == 500
    assert doc["responseCode"] == "SERVER_ERROR" and doc["params"] == {"err": "Request failed"}
    assert fake.mids == set() and fake.batches == []


async def test_hang_times_the_client_out_and_records_nothing(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.hang_seconds = 3.0
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            fake.url, data=gz_body(batch(["a"])), headers=headers(), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    for _ in range(200):  # the server sees the disconnect one loop turn or so later
        if fake.abandoned:
            break
        await asyncio.sleep(0.01)
    assert fake.mids == set() and fake.abandoned == 1


async def test_hang_after_store_loses_only_the_ack(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.hang_seconds, fake.hang_after_store = 3.0, True
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            fake.url, data=gz_body(batch(["a"])), headers=headers(), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    assert fake.mids == {"a"}


@pytest.mark.parametrize("after_store", [False, True])
async def test_reset_is_a_client_error(fake: FakeUpstream, session: aiohttp.ClientSession, after_store: bool) -> None:
    fake.reset_rate, fake.reset_after_store = 1.0, after_store
    with pytest.raises(aiohttp.ClientError):
        await post(session, fake, gz_body(batch(["a"])))
    assert fake.resets == 1
    assert fake.mids == ({"a"} if after_store else set())
    fake.reset_faults()
    assert (await post(session, fake, gz_body(batch(["b"]))))[0] == 200


@pytest.mark.parametrize("status", [429, 503])
async def test_rate_limit_then_success(fake: FakeUpstream, session: aiohttp.ClientSession, status: int) -> None:
    fake.rate_limit(2, retry_after=7, status=status)
    for _ in range(2):
        got, doc, hdrs = await post(session, fake, gz_body(batch(["a"])))
        assert got == status and hdrs["Retry-After"] == "7" and "message" in doc
    assert fake.mids == set()
    assert (await post(session, fake, gz_body(batch(["a"]))))[0] == 200


async def test_401_until_the_key_changes(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(session, fake, gz_body(batch(["a"])), key="old")
    assert (status, doc) == (401, {"message": "Unauthorized"})
    fake.key = "old"
    assert (await post(session, fake, gz_body(batch(["a"])), key="old"))[0] == 200
    assert (await post(session, fake, gz_body(batch(["b"]))))[0] == 401


async def test_413_on_wire_size_and_on_inflated_size(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    body = gz_body(batch([f"m{i}" for i in range(50)]))
    fake.max_wire_bytes = len(body) - 1
    status, doc, _ = await post(session, fake, body)
    assert status == 413 and doc == {"message": "Request size limit exceeded"}  # Kong
    fake.max_wire_bytes = len(body)
    fake.max_json_bytes = 100  # body-parser's limit counts inflated bytes
    status, text, _ = await post(session, fake, body)
    assert status == 413 and "Payload Too Large" in text  # Express HTML, not JSON
    assert fake.mids == set()


async def test_bad_json_and_bad_gzip_are_express_400(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    assert (await post(session, fake, b"{not json", gz=False))[0] == 400
    assert (await post(session, fake, b"not gzip at all"))[0] == 400
    assert (await post(session, fake, gz_body(batch(["a"]))[:-10]))[0] == 400  # truncated
    assert fake.batches == []


async def test_reject_mids_names_them_and_records_nothing(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.reject_mids = {"bad1", "bad2"}
    status, doc, _ = await post(session, fake, gz_body(batch(["ok", "bad2", "bad1"])))
    assert status == 400 and doc["responseCode"] == "CLIENT_ERROR"
    assert doc["params"]["err"] == "INVALID_EVENT" and doc["params"]["errmsg"] == "invalid events: bad2, bad1"
    assert fake.mids == set() and fake.batches == []
    assert (await post(session, fake, gz_body(batch(["ok"]))))[0] == 200


async def test_down_refuses_then_up_on_the_same_port(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    assert (await post(session, fake, gz_body(batch(["a"]))))[0] == 200  # leaves a keep-alive connection
    port = fake.port
    await fake.down()
    assert fake.is_down
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, fake, gz_body(batch(["b"])))
    await fake.up()
    assert fake.port == port and not fake.is_down
    assert (await post(session, fake, gz_body(batch(["c"]))))[0] == 200
    assert fake.mids == {"a", "c"}


async def test_flap_toggles_and_ends_up(fake: FakeUpstream) -> None:
    seen: set[bool] = set()
    fake.flap(0.05, 0.05)
    for _ in range(30):
        seen.add(fake.is_down)
        await asyncio.sleep(0.01)
    fake.reset_faults()
    await asyncio.sleep(0.05)
    assert seen == {True, False} and not fake.is_down


async def test_latency_delays_the_answer(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    fake.latency = 0.2
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await post(session, fake, gz_body(batch(["a"]))))[0] == 200
    assert loop.time() - t0 >= 0.19


async def test_health_and_probe_answers(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with session.get(fake.base_url + "/health") as r:
        assert r.status == 200 and await r.json() == {"healthy": True}
    async with session.head(fake.url, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 404  # Express has no GET/HEAD route on the telemetry path
    async with session.get(fake.url) as r:
        assert r.status == 401  # Kong's auth answers first


async def test_wait_unique_and_idempotent_stop(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    waiter = asyncio.create_task(fake.wait_unique(3, timeout=2))
    await post(session, fake, gz_body(batch(["a", "b"])))
    assert not waiter.done()
    await post(session, fake, gz_body(batch(["b", "c"])))
    await waiter
    await fake.stop()
    await fake.stop()
    assert fake.mids == {"a", "b", "c"}


async def test_control_api_of_a_subprocess(session: aiohttp.ClientSession) -> None:
    script = Path(__file__).with_name("upstream.py")
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
            async with session.post(url, data=body, headers=headers()) as r:
                return r.status

        async def control_post(doc: dict[str, Any]) -> dict[str, Any]:
            async with session.post(control + "/_control", json=doc) as r:
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
        async with session.get(control + "/_state", params={"mids": "1"}) as r:
            state = await r.json()
        assert state["received"] == 3 and state["unique"] == 3 and sorted(state["mids"]) == ["a", "b", "c"]
        assert state["by_status"] == {"200": 2, "429": 1, "500": 1}
        async with session.post(control + "/_control", json={"no_such_fault": 1}) as r:
            assert r.status == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
