"""The upload page in a real (headless) Chromium at a phone's size: choose files, type the token, read the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.cdp import Browser, chromium_or_skip
from support.sharefiles import SAMPLE_ARCHIVE, SAMPLE_COUNTS, build_archive, event_bytes

pytestmark = pytest.mark.slow  # a real browser

REPORT_READY = "document.querySelector('h1') && /report|imported/i.test(document.querySelector('h1').textContent)"


async def test_phone_browser_uploads_files_and_reads_the_report(start_hub, tmp_path: Path) -> None:
    binary = chromium_or_skip()
    hub = await start_hub()
    files = tmp_path / "from-whatsapp"
    files.mkdir()
    sample = files / "telemetry.zip"
    shutil.copyfile(SAMPLE_ARCHIVE, sample)
    # WhatsApp renames documents; a name is also attacker-controlled, so it must show as text, never as markup.
    hostile_name = "WhatsApp Doc <img src=x onerror=document.title=1>.bin"
    built = files / hostile_name
    build_archive(built, [event_bytes(30), event_bytes(5)], mangled=True)

    browser = await Browser.launch(tmp_path / "chromium", binary=binary, width=390, height=844, mobile=True)
    try:
        await browser.goto(f"{hub.url}/import")
        assert await browser.eval("document.querySelector('meta[name=viewport]') !== null")
        assert await browser.eval("document.querySelector('input[type=file]').accept") == ""
        assert await browser.eval("document.querySelector('input[type=file]').multiple")
        # Big enough to tap, and nothing wider than the phone's screen.
        assert await browser.eval("document.querySelector('#submit').getBoundingClientRect().height") >= 44
        assert await browser.eval("document.documentElement.scrollWidth <= window.innerWidth")
        await browser.screenshot(tmp_path / "form.png")

        # A wrong token: a clear refusal and nothing stored.
        await browser.fill("#token", "not-the-token")
        await browser.set_files("#file", [sample])
        await browser.click("#submit")
        await browser.wait_for(
            "document.querySelector('h1') && /Nothing/.test(document.querySelector('h1').textContent)"
        )
        assert "wrong admin token" in await browser.eval("document.body.innerText")
        assert hub.rows("SELECT count(*) FROM events") == [(0,)]
        await browser.click("a.button")
        await browser.wait_for("document.querySelector('#token') !== null")

        await browser.fill("#token", hub.hub.admin_token)
        await browser.set_files("#file", [sample, built])
        await browser.click("#submit")
        await browser.wait_for(REPORT_READY)
        text = await browser.eval("document.body.innerText")
        await browser.screenshot(tmp_path / "report.png")

        assert "2 files" in text and "failed" not in text
        assert "telemetry.zip" in text and f"imported: {sum(SAMPLE_COUNTS)} new events" in text
        assert hostile_name in text and "imported: 35 new events" in text
        assert f"the file says {sum(SAMPLE_COUNTS)}" in text
        assert await browser.eval("document.querySelectorAll('img').length") == 0
        assert await browser.eval("document.title") != "1"
        assert await browser.eval("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        await browser.close()

    assert (tmp_path / "report.png").stat().st_size > 1000
    assert hub.rows("SELECT count(*) FROM events") == [(sum(SAMPLE_COUNTS) + 35,)]
    names = {name for (name,) in hub.rows("SELECT name FROM imports")}
    assert names == {"telemetry.zip", hostile_name}
    assert list((hub.hub.data_dir / "uploads").iterdir()) == []  # temp files are gone
