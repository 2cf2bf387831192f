"""Upstream delivery against a real, fault-injecting upstream server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from support.drive import FAST, send, wait_for
from support.events import js_request, make_events


def pending(hub) -> int:
    return hub.rows("SELECT count(*) FROM events WHERE delivered_at IS NULL")[0][0]


async def settle(hub, upstream, mids: set[str], timeout: float = 30.0) -> None:
    """Every accepted mid arrived upstream and nothing is pending in the hub."""
    await wait_for(
        lambda: mids <= upstream.mids and pending(hub) == 0,
        timeout,
        f"all {len(mids)} events upstream (have {len(mids & upstream.mids)})",
    )


async def test_batches_are_sent_as_the_mobile_app_sends_them(start_hub, http, upstream, tmp_path):
    key = tmp_path / "key"
    key.write_text("sekret\n")
    upstream.key = "sekret"
    hub = await start_hub(upstream={"url": upstream.base_url, "api_key_file": str(key), **FAST})
    a = make_events(250, channel="chan-a", pdata="app.one")
    b = make_events(30, channel="chan-b", pdata="app.two")
    await send(http, hub, a[:100] + b[:10])
    await send(http, hub, a[100:] + b[10:])
    await settle(hub, upstream, {e["mid"] for e in a + b})
    assert upstream.ignored_requests == []
    for batch in upstream.batches:
        assert batch.path == "/api/data/v1/telemetry" and batch.content_encoding == "gzip"
        assert batch.msgid == batch.mid and batch.did == hub.hub.hub_id == batch.device_id
        assert batch.event_count <= 200
        want = {"chan-a": "app.one", "chan-b": "app.two"}[batch.channel_id]
        assert batch.app_id == want
        src = {e["mid"]: e for e in (a if batch.channel_id == "chan-a" else b)}
        assert set(batch.mids) <= set(src)
    # Each event arrives exactly as the device sent it.
    raw = dict(hub.rows("SELECT mid, raw FROM stored_events"))
    for e in upstream.events:
        assert json.loads(raw[e["mid"]]) == e
    assert sorted(upstream.received_mids) == sorted(upstream.mids)  # no duplicates without faults
    s = hub.hub.forwarder.state
    await wait_for(lambda: s.delivered == 280, 5, "the forwarder's count to catch up with the store")
    assert s.link == "up" and s.last_success_at
    assert hub.hub.store.stats.backlog == 0


async def test_a_long_backlog_goes_up_once_per_event_and_batch(start_hub, http, upstream):
    """The next batch is sent while the last one's delivery is being committed: none may go twice."""
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "batch_events": 20})
    events = make_events(3000)
    for i in range(0, len(events), 200):
        await send(http, hub, events[i : i + 200])
    await settle(hub, upstream, {e["mid"] for e in events}, timeout=60)
    assert sorted(upstream.received_mids) == sorted(e["mid"] for e in events)  # each event once
    msgids = [b.msgid for b in upstream.batches]
    assert len(msgids) == len(set(msgids)) >= 150
    await wait_for(lambda: hub.hub.forwarder.state.delivered == 3000, 5, "delivered count")
    assert hub.rows("SELECT count(*) FROM batches") == [(0,)]


async def test_new_events_reach_upstream_within_seconds(start_hub, http, upstream):
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "probe_interval": 30.0})
    await send(http, hub, make_events(1))
    await wait_for(lambda: len(upstream.mids) == 1, 5)
    # Idle now; the next event must be woken by the commit, not found by polling.
    await asyncio.sleep(0.5)
    events = make_events(3)
    t0 = time.monotonic()
    await send(http, hub, events)
    await wait_for(lambda: {e["mid"] for e in events} <= upstream.mids, 3, "delivery after a commit")
    assert time.monotonic() - t0 < 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "faults",
    [
        {"fail_rate": 0.5},
        {"reset_rate": 0.4},
        {"reset_rate": 0.4, "reset_after_store": True},
        {"latency": 0.01, "fail_rate": 0.2, "reset_rate": 0.2},
    ],
    ids=["500s", "resets", "resets-after-store", "mixed"],
)
async def test_random_faults_lose_nothing(start_hub, http, upstream, faults):
    upstream.configure(**faults)
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "batch_events": 50})
    events = make_events(600)
    for i in range(0, 600, 100):
        await send(http, hub, events[i : i + 100])
    await settle(hub, upstream, {e["mid"] for e in events}, 60)
    s = hub.hub.forwarder.state
    assert sum(s.errors.values()) > 0, "the faults never happened"
    dupes = len(upstream.received_mids) - len(upstream.mids)
    if not faults.get("reset_after_store"):
        assert dupes == 0
    # Retries of a batch reuse its msgid, so upstream's batch dedup can work.
    by_msgid: dict[str, set[str]] = {}
    for b in upstream.batches:
        by_msgid.setdefault(b.msgid, set()).update(b.mids)
    assert sum(len(v) for v in by_msgid.values()) == len(upstream.mids)


async def test_hangs_past_the_timeout_are_retried(start_hub, http, upstream):
    upstream.hang_seconds = 3.0
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(20)
    await send(http, hub, events)
    await wait_for(lambda: hub.hub.forwarder.state.errors.get("network", 0) >= 1, 10, "a timeout")
    assert "upstream.timeout" in hub.hub.forwarder.state.last_error
    upstream.hang_seconds = 0
    await settle(hub, upstream, {e["mid"] for e in events})


@pytest.mark.slow
async def test_retry_after_is_honoured(start_hub, http, upstream):
    upstream.rate_limit(2, retry_after=1, status=429)
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(10)
    t0 = time.monotonic()
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events})
    assert time.monotonic() - t0 >= 1.9  # two Retry-After: 1 waits, not the 0.4 s backoff cap
    assert hub.hub.forwarder.state.errors["throttled"] == 2


@pytest.mark.slow
async def test_rejected_key_waits_and_resumes_when_the_key_file_is_fixed(start_hub, http, upstream, tmp_path, caplog):
    key = tmp_path / "upstream-key"
    key.write_text("old-key")
    upstream.key = "new-key"
    hub = await start_hub(
        upstream={"url": upstream.url, "api_key_file": str(key), **FAST, "auth_retry_interval": 300.0}
    )
    events = make_events(30)
    await send(http, hub, events)
    await wait_for(lambda: hub.hub.forwarder.state.link == "auth-failed", 10, "auth failure")
    await asyncio.sleep(0.5)
    assert upstream.by_status.get(401) == 1  # retried slowly, not hammered
    assert pending(hub) == 30
    assert "old-key" not in caplog.text and "rejected the API key" in caplog.text
    key.write_text("new-key\n")
    await settle(hub, upstream, {e["mid"] for e in events}, 10)
    assert hub.hub.forwarder.state.link == "up"


async def test_key_from_systemd_credentials_directory(start_hub, http, upstream, tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "upstream-key").write_text("cred-key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    upstream.key = "cred-key"
    hub = await start_hub(upstream={"url": upstream.url, "api_key_file": "upstream-key", **FAST})
    events = make_events(5)
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events})


async def test_413_halves_the_batch_and_remembers(start_hub, http, upstream):
    upstream.max_wire_bytes = 5_000  # well under 200 gzipped sample events
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(400)
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events})
    s = hub.hub.forwarder.state
    assert s.errors["too-large"] >= 1 and s.batch_limit < 200
    assert max(b.wire_bytes for b in upstream.batches) <= 5_000


async def test_400_isolates_the_refused_events_in_dead_letter(start_hub, http, upstream):
    events = make_events(300)
    bad = {events[7]["mid"], events[150]["mid"], events[299]["mid"]}
    upstream.reject_mids = set(bad)
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    await send(http, hub, events[:150])
    await send(http, hub, events[150:])
    good = {e["mid"] for e in events} - bad
    await settle(hub, upstream, good)
    assert not (bad & upstream.mids)
    dead = dict(hub.rows("SELECT mid, reason FROM dead_letter"))
    assert set(dead) == bad
    assert all("400" in r and m in r for m, r in dead.items())
    assert hub.hub.store.stats.dead_letters == 3 and hub.hub.store.stats.backlog == 0
    # Fixed upstream: an admin re-queues them and they go through.
    upstream.reject_mids = set()
    token = hub.hub.admin_token
    async with http.post(hub.url + "/admin/dead-letters/requeue", json={"all": True}) as r:
        assert r.status == 401
    async with http.get(hub.url + "/admin/dead-letters", headers={"Authorization": f"Bearer {token}"}) as r:
        listed = await r.json()
        assert listed["total"] == 3 and {i["mid"] for i in listed["items"]} == bad
    for item in listed["items"]:  # upstream's errmsg in words; its raw answer kept beside it
        assert item["reason"].startswith("upstream answered 400: ") and "{" not in item["reason"], item
        assert '"errmsg"' in item["raw_reason"] and item["mid"] in item["reason"]
    async with http.post(
        hub.url + "/admin/dead-letters/requeue", json={"all": True}, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert (await r.json()) == {"requeued": 3}
    await settle(hub, upstream, bad | good)
    assert hub.rows("SELECT count(*) FROM dead_letter") == [(0,)]


@pytest.mark.slow
async def test_link_down_then_up_delivery_resumes_by_itself(start_hub, http, upstream):
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "backoff_max": 30.0})
    await upstream.down()
    events = make_events(50)
    await send(http, hub, events)
    await wait_for(lambda: hub.hub.forwarder.state.link == "down", 10, "link down")
    # While down, the forwarder does not spin: a few attempts, not hundreds.
    attempts = hub.hub.forwarder.state.errors["network"]
    await asyncio.sleep(1.0)
    assert hub.hub.forwarder.state.errors["network"] - attempts < 15
    await upstream.up()
    t0 = time.monotonic()
    await settle(hub, upstream, {e["mid"] for e in events}, 10)
    assert time.monotonic() - t0 < 5, "delivery did not start within seconds of the link coming back"


async def test_sync_now_reports_the_outcome(start_hub, http, upstream):
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "upload_windows": ["03:00-03:01"]})
    events = make_events(40)
    await send(http, hub, events)
    await asyncio.sleep(0.5)
    now = time.localtime()
    if not (now.tm_hour == 3 and now.tm_min == 0):
        assert upstream.mids == set() and "upload window" in hub.hub.forwarder.state.waiting_for
    headers = {"Authorization": f"Bearer {hub.hub.admin_token}"}
    async with http.post(hub.url + "/admin/sync") as r:
        assert r.status == 401
    async with http.post(hub.url + "/admin/sync", headers=headers) as r:
        result = await r.json()
    assert r.status == 200 and result["ok"] and result["delivered"] == 40 and result["backlog"] == 0
    assert {e["mid"] for e in events} <= upstream.mids


async def test_daily_byte_budget_holds_delivery(start_hub, http, upstream):
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "daily_byte_budget": 1, "batch_events": 10})
    await send(http, hub, make_events(50))
    await wait_for(lambda: len(upstream.batches) >= 1, 10)
    await asyncio.sleep(0.5)
    assert len(upstream.batches) == 1  # one batch used the day's budget
    assert "budget" in hub.hub.forwarder.state.waiting_for


async def test_daily_byte_budget_survives_a_restart(start_hub, http, upstream, tmp_path):
    """Bytes sent today are kept in the store: a restarting hub must not start the day's budget afresh."""
    data = {"data_dir": str(tmp_path / "budget")}
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "batch_events": 10}, server=data)
    await send(http, hub, make_events(30))
    await wait_for(lambda: len(upstream.mids) == 30 and pending(hub) == 0, 10)
    sent = hub.hub.forwarder.state.sent_bytes_today
    assert sent == sum(b.wire_bytes for b in upstream.batches) > 0
    await hub.hub.stop()

    again = await start_hub(upstream={"url": upstream.url, **FAST, "daily_byte_budget": sent}, server=data)
    assert again.hub.forwarder.state.sent_bytes_today == sent
    await send(http, again, make_events(5))
    await asyncio.sleep(1.0)
    assert len(upstream.mids) == 30  # today's budget was already spent before the restart
    assert "budget" in again.hub.forwarder.state.waiting_for


async def test_hub_to_hub_chain(start_hub, http, upstream, tmp_path):
    b = await start_hub(upstream={"url": upstream.url, **FAST}, server={"data_dir": str(tmp_path / "b")})
    a = await start_hub(upstream={"url": b.url, **FAST}, server={"data_dir": str(tmp_path / "a")})
    events = make_events(120, channel="chan-x", pdata="app.x")
    await send(http, a, events[:60])
    body, headers = js_request(events[60:])
    async with http.post(a.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
        assert r.status == 200
    await settle(b, upstream, {e["mid"] for e in events})
    assert pending(a) == 0
    sent = dict(a.rows("SELECT mid, raw FROM stored_events"))
    relayed = dict(b.rows("SELECT mid, raw FROM stored_events"))
    assert sent == relayed  # byte for byte through both hubs
    assert {bt.channel_id for bt in upstream.batches} == {"chan-x"}


async def test_retention_deletes_only_delivered_events(start_hub, http, upstream):
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(100)
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events})
    await upstream.down()
    await send(http, hub, make_events(10))
    deleted = await hub.hub.store.prune(retention_s=0)
    assert deleted == 100
    assert hub.rows("SELECT count(*) FROM events") == [(10,)]
    assert pending(hub) == 10


async def test_gzip_off_sends_plain_json(start_hub, http, upstream):
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "gzip": False})
    events = make_events(5)
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events})
    assert all(b.content_encoding is None for b in upstream.batches)


def test_windows_parse_and_wrap():
    from datetime import datetime

    from hub.config import parse_windows
    from hub.forward.schedule import in_window

    w = parse_windows(("22:00-06:00",))
    assert in_window(w, datetime(2026, 1, 1, 23, 0)) and in_window(w, datetime(2026, 1, 1, 5, 59))
    assert not in_window(w, datetime(2026, 1, 1, 6, 0)) and not in_window(w, datetime(2026, 1, 1, 12, 0))
    assert in_window([], datetime(2026, 1, 1, 12, 0))


async def _cli(*args: str) -> tuple[int, str]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


@pytest.mark.slow
async def test_cli_sync_and_dead_letters(start_hub, http, upstream):
    events = make_events(20)
    upstream.reject_mids = {events[3]["mid"]}
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    await upstream.down()
    await send(http, hub, events)
    token = hub.hub.admin_token
    code, out = await _cli("sync", "--url", hub.url, "--token", token, "--timeout", "2")
    assert code == 1 and "still waiting" in out and "network" in out  # link down: said plainly
    await upstream.up()
    code, out = await _cli("sync", "--url", hub.url, "--token", token)
    assert code == 0 and "19 still waiting" not in out, out
    await settle(hub, upstream, {e["mid"] for e in events} - upstream.reject_mids)
    code, out = await _cli("dead-letter", "list", "--url", hub.url, "--token", token)
    assert code == 0 and events[3]["mid"] in out and "1 dead letter (" in out
    code, out = await _cli("dead-letter", "list", "--url", hub.url, "--token", "wrong")
    assert code == 1 and "admin token" in out
    upstream.reject_mids = set()
    code, out = await _cli("dead-letter", "requeue", events[3]["mid"], "--url", hub.url, "--token", token)
    assert code == 0 and "re-queued 1" in out
    await settle(hub, upstream, {e["mid"] for e in events})


def _gaps(attempts) -> list[float]:
    return [b.at - a.at for a, b in zip(attempts, attempts[1:])]


@pytest.mark.slow  # 3 s of 500s by design
async def test_server_errors_are_retried_with_backoff_then_everything_is_delivered(start_hub, http, upstream):
    """Upstream answers 500 for 3 s: the hub retries a few times, spaced by its backoff, then delivers all once."""
    initial, cap, window = 0.1, 0.4, 3.0
    upstream.fail_rate = 1.0  # every batch: 500 SERVER_ERROR, nothing stored
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "backoff_initial": initial, "backoff_max": cap})
    events = make_events(30)  # one batch
    await send(http, hub, events)
    await wait_for(lambda: upstream.attempts, 5, "the first attempt")
    first = upstream.attempts[0].at
    await asyncio.sleep(window)
    upstream.fail_rate = 0.0
    failed = [a for a in upstream.attempts if a.status == 500]
    in_window = [a for a in failed if a.at - first <= window]
    # Full-jitter backoff: the k-th wait is uniform in [0, min(cap, initial * 2**k)], so its mean is at least
    # `initial` (the first) and soon cap/2. Twice the count that mean-`initial` waits would fit is far above
    # what the hub makes (~15) and far below a loop without backoff (hundreds in 3 s).
    bound = 2 * (1 + window / initial)
    gaps = _gaps(in_window)
    print(f"{len(in_window)} attempts in {window} s (bound {bound:.0f}); gaps {[round(g, 3) for g in gaps[:40]]}")
    assert 2 <= len(in_window) <= bound, f"{len(in_window)} attempts in {window} s (bound {bound:.0f})"
    median = sorted(gaps)[len(gaps) // 2]
    # Spaced: a jittered wait may be near 0 now and then, but most are a good part of the backoff.
    assert median >= initial / 4, f"median gap {median * 1000:.1f} ms; gaps {[round(g, 3) for g in gaps[:40]]}"
    assert max(gaps) <= cap + 0.5, f"a wait beyond backoff_max: {[round(g, 3) for g in gaps[:40]]}"
    await settle(hub, upstream, {e["mid"] for e in events}, 10)
    assert upstream.redelivered() == {}, "an event went up twice"
    assert len(upstream.batches) == 1 and upstream.batches[0].mids == [e["mid"] for e in events]


@pytest.mark.parametrize("fault", ["500", "reset"])
async def test_a_retried_batch_keeps_its_msgid_and_its_events(start_hub, http, upstream, fault):
    """Upstream dedups batches by params.msgid: a retry must be the same batch, not a new one (nor a changed one)."""
    if fault == "500":
        upstream.fail_rate = 1.0  # answered 500 SERVER_ERROR
    else:
        upstream.reset_rate = 1.0  # read, then the connection drops before any answer
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(30)  # one batch
    mids = [e["mid"] for e in events]
    await send(http, hub, events)
    await wait_for(lambda: len(upstream.attempts) >= 3, 10, "three failed attempts")
    upstream.reset_faults()
    await settle(hub, upstream, set(mids), 10)
    attempts = upstream.attempts
    failed, last = attempts[:-1], attempts[-1]
    assert len(failed) >= 3 and all(a.status == (500 if fault == "500" else None) for a in failed), attempts
    assert last.status == 200
    assert attempts[0].msgid, "the batch has no params.msgid"
    assert [a.msgid for a in attempts] == [attempts[0].msgid] * len(attempts), "a retry came with a new msgid"
    assert all(a.mids == mids for a in attempts), "a retry carried other events than the first attempt"
    assert [(b.msgid, b.mids) for b in upstream.batches] == [(attempts[0].msgid, mids)]
