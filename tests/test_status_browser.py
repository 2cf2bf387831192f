"""The status page in a real (headless) Chromium, on a laptop's and a phone's screen: figures, screenshots, Sync now."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.cdp import Browser, chromium_or_skip
from support.drive import FAST as DRIVE_FAST
from support.drive import send as post
from support.drive import wait_for
from support.events import make_events

pytestmark = pytest.mark.slow  # a real browser

OUT = Path(__file__).resolve().parents[1] / "bench" / "out"  # gitignored: screenshots to look at
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
LAPTOP = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
FAST = {**DRIVE_FAST, "timeout": 2.0, "auth_retry_interval": 300.0}
HOSTILE = "<img src=x onerror=document.title='owned'>"


async def figure(browser: Browser, element_id: str) -> int:
    return int(await browser.eval(f"document.getElementById({element_id!r}).dataset.n"))


async def save(browser: Browser, tmp_path: Path, name: str) -> None:
    shot = await browser.screenshot(tmp_path / name)
    assert shot.stat().st_size > 5000
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, OUT / name)


async def test_status_page_in_a_browser_shows_the_figures_and_sync_now_delivers(start_hub, http, upstream, tmp_path):
    binary = chromium_or_skip()
    hub = await start_hub(upstream={"url": upstream.base_url, **FAST}, server={"branch_name": "Govt. School, Block B"})
    first = make_events(40, did="tablet-07") + make_events(9, did="tablet-12")
    await post(http, hub, first[:40], "tablet-07")
    await post(http, hub, first[40:], "tablet-12")
    await post(http, hub, make_events(3, did=HOSTILE), HOSTILE)
    await upstream.wait_unique(52)
    # Upstream starts refusing the hub's key: the next events wait (auth_retry_interval is 300 s, so only
    # Sync now can move them within this test).
    upstream.key = "rotated"
    waiting = make_events(25, did="tablet-07")
    await post(http, hub, waiting, "tablet-07")
    await wait_for(lambda: hub.hub.forwarder.state.link == "auth-failed", what="the key refused")
    stats = hub.hub.store.stats

    browser = await Browser.launch(tmp_path / "chromium", binary=binary, width=LAPTOP["width"], height=LAPTOP["height"])
    try:
        await browser.goto(hub.url + "/")
        assert await figure(browser, "backlog") == stats.backlog == 25
        assert await figure(browser, "delivered") == stats.delivered == 52
        assert await figure(browser, "devices-count") == 3 == hub.rows("SELECT count(*) FROM devices")[0][0]
        text = await browser.eval("document.body.innerText")
        assert "Needs attention" in text and "API key" in text and "Govt. School, Block B" in text
        assert HOSTILE in text  # shown as text...
        assert await browser.eval("document.querySelectorAll('main img').length") == 0  # ...never as markup
        assert await browser.eval("document.title") != "owned"
        assert await browser.eval("document.querySelector('svg.chart') !== null")
        assert await browser.eval("document.querySelector('svg.qr').getBoundingClientRect().width") >= 150
        await save(browser, tmp_path, "status-page.png")

        # A phone: nothing wider than the screen, buttons big enough to tap.
        await browser.send("Emulation.setDeviceMetricsOverride", PHONE)
        await browser.goto(hub.url + "/")
        assert await browser.eval("document.documentElement.scrollWidth <= window.innerWidth")
        assert await browser.eval("document.querySelector('#sync').getBoundingClientRect().height") >= 44
        assert await browser.eval("document.querySelector('#sync').getBoundingClientRect().right") <= 390
        await save(browser, tmp_path, "status-page-phone.png")

        # The key is fixed upstream; branch IT taps Sync now with the admin token.
        upstream.key = None
        await browser.fill("#token", hub.hub.admin_token)
        await browser.click("#sync")
        await browser.wait_for("document.getElementById('sync-result') !== null", timeout=30)
        assert "Sync finished" in await browser.eval("document.getElementById('sync-result').innerText")
        assert upstream.mids >= {e["mid"] for e in waiting}
        assert stats.backlog == 0 and hub.rows("SELECT count(*) FROM events WHERE delivered_at IS NULL") == [(0,)]
        assert await figure(browser, "backlog") == 0
        assert await figure(browser, "delivered") == stats.delivered == 77
        assert await browser.eval("document.getElementById('state').dataset.state") == "ok"
        assert await browser.eval("document.getElementById('link').dataset.link") == "up"
        assert hub.hub.admin_token not in await browser.eval("document.documentElement.outerHTML")
        await save(browser, tmp_path, "status-page-phone-synced.png")
    finally:
        await browser.close()
