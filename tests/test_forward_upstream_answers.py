"""Only upstream can acknowledge: portals, proxies, redirects and odd ids on the delivery path.

A real hub, the fake upstream (tests/support/upstream.py) with something else answering in its place
(``answer``: a captive portal, an empty 200, unrelated JSON, a redirect), and real SQLite.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from support.drive import FAST, send, wait_for
from support.events import make_events


def pending(hub) -> int:
    return hub.rows("SELECT count(*) FROM events WHERE delivered_at IS NULL")[0][0]


def delivered_rows(hub) -> int:
    return hub.rows("SELECT count(*) FROM events WHERE delivered_at IS NOT NULL")[0][0]


async def settle(hub, upstream, mids: set[str], timeout: float = 10.0) -> None:
    await wait_for(
        lambda: mids <= upstream.mids and pending(hub) == 0,
        timeout,
        f"all {len(mids)} events upstream (have {len(mids & upstream.mids)})",
    )


async def status_of(http, hub) -> tuple[dict, dict]:
    """(/health, /status.json) as branch IT's scripts read them."""
    async with http.get(hub.url + "/health") as r:
        health = await r.json()
    headers = {"Authorization": f"Bearer {hub.hub.admin_token}"}
    async with http.get(hub.url + "/status.json", headers=headers) as r:
        assert r.status == 200
        status = await r.json()
    return health, status


def tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info]


async def test_a_captive_portal_is_not_an_acknowledgement(start_hub, http, upstream, caplog):
    """200 + an HTML page for a while: nothing delivered, link `intercepted`; then upstream answers: all once."""
    upstream.configure(answer="portal")
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(30)
    mids = {e["mid"] for e in events}
    await send(http, hub, events)
    forwarder = hub.hub.forwarder
    await wait_for(lambda: upstream.by_status[200] >= 1, 5, "the portal's first answer")
    await asyncio.sleep(0.3)  # time enough for the hub to record a (wrong) delivery
    assert upstream.mids == set() and pending(hub) == 30 and delivered_rows(hub) == 0
    await wait_for(lambda: forwarder.state.link == "intercepted", 5, "link intercepted")
    await wait_for(lambda: upstream.by_status[200] >= 3, 5, "a few attempts through the portal")
    await forwarder.probe()  # the portal answers the probe too: that must not make the link look up
    assert forwarder.state.link == "intercepted"

    assert upstream.mids == set() and pending(hub) == 30 and delivered_rows(hub) == 0
    assert forwarder.state.delivered == 0 and hub.hub.store.stats.backlog == 30
    health, status = await status_of(http, hub)
    assert health["delivered"] == 0 and health["backlog"] == 30 and health["link"] == "intercepted"
    up = status["upstream"]
    assert up["link"] == "intercepted" and "captive portal" in up["link_text"]
    assert status["events"]["delivered"] == 0
    assert "Data pack expired" in forwarder.state.last_error  # the page's title, in words
    assert forwarder.state.errors["intercepted"] >= 3
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "captive portal" in r.getMessage()]
    assert len(warned) == 1, "warned once, not per retry"

    upstream.reset_faults()  # the real upstream answers again
    await settle(hub, upstream, mids)
    assert sorted(upstream.received_mids) == sorted(mids)  # every event exactly once
    await wait_for(lambda: forwarder.state.delivered == 30, 5, "the delivered count")
    health, status = await status_of(http, hub)
    assert health["delivered"] == 30 and health["link"] == "up" and status["upstream"]["link"] == "up"
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("answer", ["empty", "other-json"])
async def test_an_empty_or_unrelated_200_is_not_an_acknowledgement(start_hub, http, upstream, answer):
    upstream.configure(answer=answer)
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(12)
    await send(http, hub, events)
    forwarder = hub.hub.forwarder
    await wait_for(lambda: forwarder.state.errors.get("intercepted", 0) >= 2, 5, "two intercepted answers")
    assert forwarder.state.link == "intercepted"
    assert pending(hub) == 12 and delivered_rows(hub) == 0 and upstream.mids == set()
    upstream.reset_faults()
    await settle(hub, upstream, {e["mid"] for e in events})
    assert upstream.redelivered() == {}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_nothing_counts_as_delivered(start_hub, http, upstream, status):
    """The POST is answered with a redirect, any GET with the service's SUCCESS: only a POST upstream got counts."""
    upstream.configure(answer="redirect", redirect_status=status)
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    events = make_events(20)
    await send(http, hub, events)
    forwarder = hub.hub.forwarder
    await wait_for(lambda: upstream.by_status[status] >= 1, 5, "the first redirect")
    await asyncio.sleep(0.3)  # time enough for the hub to follow it and record a (wrong) delivery or refusal
    assert upstream.mids == set() and pending(hub) == 20 and delivered_rows(hub) == 0
    assert hub.rows("SELECT count(*) FROM dead_letter") == [(0,)]
    assert set(upstream.by_status) == {status}, f"the redirect was followed: {upstream.by_status}"
    await wait_for(lambda: forwarder.state.errors.get("moved", 0) >= 2, 5, "two redirects")
    assert forwarder.state.link == "moved"
    where = f"{upstream.base_url}/moved/api/data/v1/telemetry"
    assert where in forwarder.state.last_error and "upstream.url" in forwarder.state.last_error
    health, status_json = await status_of(http, hub)
    assert health["link"] == "moved" and health["delivered"] == 0
    assert "redirect" in status_json["upstream"]["link_text"]
    upstream.reset_faults()
    await settle(hub, upstream, {e["mid"] for e in events})
    assert upstream.redelivered() == {}


async def test_a_redirect_location_is_logged_without_credentials_or_query(start_hub, http, upstream, caplog):
    upstream.configure(answer="redirect", redirect_to="https://user:pw@elsewhere.example/t?key=SECRET")
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    await send(http, hub, make_events(3))
    await wait_for(lambda: hub.hub.forwarder.state.link == "moved", 5, "link moved")
    assert "https://elsewhere.example/t" in hub.hub.forwarder.state.last_error
    assert "SECRET" not in caplog.text and "pw@" not in caplog.text
    assert "SECRET" not in hub.hub.forwarder.state.last_error


ODD_CHANNELS = ["x\r\nX-Injected: 1", "c" * 9000, "ctl\x01char", "caf\u00e9 \u0926\u0940\u0915\u094d\u0937\u093e"]


async def test_header_unsafe_ids_are_delivered_byte_for_byte(start_hub, http, upstream, caplog):
    """Channel/app ids that cannot be headers: the configured ids go in the headers, the events go as they are."""
    caplog.set_level(logging.INFO)
    hub = await start_hub(upstream={"url": upstream.url, **FAST, "channel_id": "fallback-chan"})
    good = make_events(40, channel="chan-good", pdata="app.good")
    odd = [e for c in ODD_CHANNELS for e in make_events(2, channel=c)]
    odd_app = make_events(2, channel="chan-good", pdata="app\r\nX-Injected: 1")
    events = good[:20] + odd + odd_app + good[20:]
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events}, timeout=5)
    await wait_for(lambda: hub.hub.store.stats.backlog == 0, 5, "the backlog back to 0")
    assert hub.rows("SELECT count(*) FROM dead_letter") == [(0,)]
    assert upstream.redelivered() == {}
    # Forwarded byte for byte: the bytes the hub stored are in the body upstream received.
    raw = dict(hub.rows("SELECT mid, raw FROM stored_events"))
    bodies = upstream.bodies()
    for e in events:
        assert any(raw[e["mid"]] in body for body in bodies), e["context"]["channel"][:20]
    sent = {e["mid"]: e for e in events}
    for got in upstream.events:
        assert got == sent[got["mid"]]
    for batch in upstream.batches:
        channels = {sent[m]["context"]["channel"] for m in batch.mids}
        assert len(channels) == 1  # the store still routes one channel per batch
        (channel,) = channels
        assert batch.channel_id == (channel if channel == "chan-good" else "fallback-chan")
        assert batch.app_id is None or "\n" not in batch.app_id
    assert tracebacks(caplog) == [] and "Traceback" not in caplog.text
    assert "cannot be sent as X-Channel-Id" in caplog.text


async def test_a_request_that_cannot_be_built_isolates_its_event(start_hub, http, upstream, caplog, monkeypatch):
    """Whatever makes aiohttp refuse a request (here: a header it will not write) is classified, never raised."""
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    sink = hub.hub.forwarder.sink
    events = make_events(16)
    poison = events[5]["mid"]
    encode = sink.encode

    async def encode_with_a_bad_header(batch, rows):
        encoded = await encode(batch, rows)
        if any(mid == poison for _, mid, _ in rows):
            encoded.headers["X-Note"] = "line\r\nbreak"  # aiohttp raises ValueError when writing it
        return encoded

    monkeypatch.setattr(sink, "encode", encode_with_a_bad_header)
    await send(http, hub, events)
    good = {e["mid"] for e in events} - {poison}
    await settle(hub, upstream, good, timeout=5)
    dead = dict(hub.rows("SELECT mid, reason FROM dead_letter"))
    assert list(dead) == [poison] and "could not build the request" in dead[poison]
    assert poison not in upstream.mids
    assert tracebacks(caplog) == []


async def test_a_repeating_forwarder_error_logs_one_traceback_and_backs_off(start_hub, http, upstream, caplog):
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    forwarder = hub.hub.forwarder
    encode = forwarder.sink.encode
    failures = []

    async def failing_encode(batch, rows):
        if len(failures) < 6:
            failures.append(batch.id)
            raise RuntimeError("encoder bug")
        return await encode(batch, rows)

    forwarder.sink.encode = failing_encode
    events = make_events(10)
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events}, timeout=8)
    assert len(failures) == 6
    logged = [r for r in tracebacks(caplog) if "encoder bug" in str(r.exc_info[1])]
    assert len(logged) == 1, f"{len(logged)} tracebacks for one repeating cause"


class _Escaped(BaseException):
    """Something the loop's `except Exception` does not catch: the delivery task ends."""


async def test_the_delivery_task_is_restarted_if_it_ends(start_hub, http, upstream, caplog):
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    forwarder = hub.hub.forwarder
    step = forwarder._step
    calls = []

    async def step_once_fatal():
        calls.append(1)
        if len(calls) == 1:
            raise _Escaped("the loop was broken")
        await step()

    forwarder._step = step_once_fatal
    forwarder.wake()
    await wait_for(lambda: forwarder.state.restarts == 1, 5, "a restart")
    events = make_events(5)
    await send(http, hub, events)
    await settle(hub, upstream, {e["mid"] for e in events}, timeout=5)
    assert forwarder.state.restarts == 1
    assert "restarting it" in caplog.text and "the loop was broken" in caplog.text
