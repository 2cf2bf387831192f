"""One device's story: the JSON the CLI shows and the page, with counts that match the store."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import uuid

import pytest
from support.cdp import Browser, chromium_or_skip
from support.drive import FAST, send, wait_for
from support.events import make_events
from test_status_browser import HOSTILE, PHONE, figure, save

from hub.store.migrations import _MIGRATIONS


async def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """The CLI as a real process, off the loop the in-process hub runs on."""
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)


# The new page has loaded (not the old one still showing while the browser navigates).
LOADED = (
    "location.search.includes('{query}') && document.readyState === 'complete'"
    " && document.getElementById('did') !== null"
)


def story_rows(hub, did: str) -> dict[str, int]:
    """The figures as an outsider counts them in the SQLite file."""
    ((stored, delivered),) = hub.rows("SELECT count(*), count(delivered_at) FROM events WHERE did = ?", (did,))
    return {
        "stored": stored,
        "delivered": delivered,
        "waiting": stored - delivered,
        "quarantined_count": hub.rows("SELECT count(*) FROM quarantine WHERE did = ?", (did,))[0][0],
        "dead_letters": hub.rows("SELECT count(*) FROM dead_letter WHERE did = ?", (did,))[0][0],
    }


async def populate(http, hub, upstream, did: str) -> list[dict]:
    events = make_events(12, did=did)
    upstream.reject_mids = {events[2]["mid"]}
    await send(http, hub, events[:10], did)
    await send(http, hub, events[8:10], did)  # sent again: 2 duplicates
    await wait_for(lambda: hub.hub.store.stats.backlog == 0, what="delivery")
    await upstream.down()
    junk = [{"mid": "j-" + uuid.uuid4().hex, "ets": 1}, {"mid": "k-" + uuid.uuid4().hex, "ets": 1}]
    await send(http, hub, [*events[10:], *junk], did)
    await send(http, hub, make_events(3, did="other-tablet"), "other-tablet")
    return events


async def test_device_story_json_and_cli_match_the_store(start_hub, http, upstream):
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    did = "tablet-" + uuid.uuid4().hex
    await populate(http, hub, upstream, did)
    token = {"Authorization": f"Bearer {hub.hub.admin_token}"}
    async with http.get(hub.url + "/device.json", params={"did": did}, headers=token) as r:
        story = await r.json()
        assert r.status == 200, story
    assert {k: story[k] for k in story_rows(hub, did)} == story_rows(hub, did)
    assert (story["requests"], story["received"], story["duplicates"]) == (3, 14, 2)
    assert (story["delivered"], story["waiting"], story["dead_letters"], story["quarantined_count"]) == (9, 2, 1, 2)
    assert story["quarantined"] == [{"reason": "event has no 'eid' string", "count": 2}]
    assert story["addresses"][0]["address"] == "127.0.0.1" and story["last_delivered_at"]
    assert sum(d["received"] for d in story["per_day"]) == 11 and len(story["per_day"]) == 14
    # A prefix finds it; an unknown id is a 404 that says so.
    async with http.get(hub.url + "/device.json", params={"q": did[:12]}, headers=token) as r:
        assert r.status == 200 and (await r.json())["did"] == did
    async with http.get(hub.url + "/device.json", params={"did": "nope"}, headers=token) as r:
        assert r.status == 404 and "nope" in (await r.json())["error"]
    # The CLI (a real process) shows the same story in words, and as JSON.
    cli = [sys.executable, "-m", "hub", "device", did, "--url", hub.url, "--token", hub.hub.admin_token]
    out = await run(cli)
    assert out.returncode == 0, out.stderr
    assert did in out.stdout and "9 delivered" in out.stdout and "2 waiting" in out.stdout
    assert "event has no 'eid' string: 2" in out.stdout
    out = await run([*cli, "--json"])
    assert out.returncode == 0 and '"waiting": 2' in out.stdout
    missing = await run([*cli[:4], "nope", *cli[5:]])
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow  # a real browser
async def test_device_page_on_a_phone_links_from_the_status_page_and_finds_by_prefix(
    start_hub, http, upstream, tmp_path
):
    binary = chromium_or_skip()
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    did = "tablet-" + uuid.uuid4().hex + "-" + HOSTILE
    await populate(http, hub, upstream, did)
    want = story_rows(hub, did)
    browser = await Browser.launch(tmp_path / "chromium", binary=binary, width=PHONE["width"], height=PHONE["height"])
    try:
        await browser.send("Emulation.setDeviceMetricsOverride", PHONE)
        await browser.goto(hub.url + "/")
        links = await browser.eval("[...document.querySelectorAll('#devices a')].map(a => a.textContent)")
        assert did in links and "other-tablet" in links
        await browser.eval(
            "[...document.querySelectorAll('#devices a')].find(a => a.textContent.startsWith('tablet-')).click()"
        )
        await browser.wait_for(LOADED.format(query="did="), timeout=10)
        assert await browser.eval("document.getElementById('did').textContent") == did
        for key, element in (("stored", "stored"), ("delivered", "delivered"), ("waiting", "waiting")):
            assert await figure(browser, element) == want[key], key
        assert await figure(browser, "quarantined") == want["quarantined_count"] == 2
        assert await figure(browser, "dead-letters") == want["dead_letters"] == 1
        assert (await figure(browser, "requests"), await figure(browser, "received")) == (3, 14)
        assert await figure(browser, "duplicates") == 2
        assert "event has no 'eid' string" in await browser.eval("document.getElementById('reasons').innerText")
        assert "127.0.0.1" in await browser.eval("document.getElementById('addresses').innerText")
        assert await browser.eval("document.querySelectorAll('#days rect').length") == 14
        assert await browser.eval("document.querySelectorAll('main img').length") == 0
        assert await browser.eval("document.title") != "owned"
        assert await browser.eval("document.documentElement.scrollWidth <= window.innerWidth")
        assert await browser.eval("document.getElementById('did').getBoundingClientRect().right") <= PHONE["width"]
        await save(browser, tmp_path, "device-page-phone.png")
        # Search by the first characters of the id: one match opens it, several are listed.
        await browser.fill("#q", "tablet-")
        await browser.eval("document.getElementById('search').submit()")
        await browser.wait_for(LOADED.format(query="q=tablet"), timeout=10)
        assert await browser.eval("document.getElementById('did').textContent") == did
        await browser.goto(hub.url + "/device?q=t")  # tablet-... and other-tablet: only one starts with t
        await browser.wait_for("document.getElementById('did') !== null", timeout=10)
        await browser.goto(hub.url + "/device?q=zz-none")
        assert "No device" in await browser.eval("document.getElementById('not-found').innerText")
    finally:
        await browser.close()


async def test_a_version_5_store_gains_per_device_counts_and_indexes(open_store, tmp_path):
    path = tmp_path / "hub.db"
    con = sqlite3.connect(path)
    for step in _MIGRATIONS[:5]:
        con.executescript(step)
    con.execute("PRAGMA user_version=5")
    con.execute("INSERT INTO devices (did, first_seen, last_seen, events) VALUES ('old-tab', 1, 2000, 4)")
    con.execute(
        "INSERT INTO events (seq, mid, did, eid, ets, received_at, source) VALUES (1, 'm', 'old-tab', 'LOG', 1, 2000, 'api:10.0.0.9')"
    )
    con.execute("INSERT INTO event_raw (seq, raw) VALUES (1, x'7b7d')")
    con.commit()
    con.close()
    store = await open_store(path)
    story = await store.read.device_story("old-tab", 3, 2000)
    assert story is not None and (story.received, story.requests, story.duplicates, story.waiting) == (4, 0, 0, 1)
    assert story.addresses == [("10.0.0.9", 2000)] and story.per_day[-1] == (0, 1)
    con = sqlite3.connect(path)
    try:
        plan = con.execute("EXPLAIN QUERY PLAN SELECT count(*) FROM events WHERE did = 'old-tab'").fetchall()
    finally:
        con.close()
    assert any("events_did" in str(row) for row in plan)
