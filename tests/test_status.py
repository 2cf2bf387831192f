"""The status page, status JSON, /metrics and `telemetry-hub status`, against a real hub with real data."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.drive import FAST as DRIVE_FAST
from support.drive import send as post
from support.drive import wait_for
from support.events import js_request, make_events
from support.hubs import hub_config

from hub.discovery import local_urls
from hub.facts import page_needs_token

ROOT = Path(__file__).resolve().parents[1]
FAST = {**DRIVE_FAST, "timeout": 2.0, "auth_retry_interval": 300.0}
HOSTILE = "<script>alert(1)</script>"


async def populate(start_hub, http, upstream, **sections):
    """A hub that has seen real traffic: delivered, duplicate, quarantined, dead-lettered, then a backlog
    left waiting because upstream started refusing the key."""
    hub = await start_hub(upstream={"url": upstream.base_url, **FAST}, **sections)
    a = make_events(30, did="tablet-a")
    b = make_events(12, did="tablet-b")
    h = make_events(5, did=HOSTILE)
    upstream.reject_mids = {b[3]["mid"]}
    await post(http, hub, a, "tablet-a")
    await post(http, hub, b + [{"eid": "START", "ets": 1}], "tablet-b")  # the last one has no mid: quarantined
    await post(http, hub, h, HOSTILE)
    await post(http, hub, a[:4], "tablet-a")  # sent twice: 4 duplicates
    await upstream.wait_unique(46)
    await wait_for(
        lambda: hub.hub.store.stats.dead_letters == 1 and hub.hub.store.stats.backlog == 0,
        what="one dead letter, nothing waiting",
    )
    # Upstream now refuses the hub's key: new events wait in the backlog, and the page must say why.
    upstream.key = "rotated-key"
    late = make_events(7, did="tablet-a")
    await post(http, hub, late, "tablet-a")
    await wait_for(lambda: hub.hub.forwarder.state.link == "auth-failed", what="the key refused")
    return hub


def figures_from_db(hub) -> dict[str, int]:
    one = lambda sql: hub.rows(sql)[0][0]  # noqa: E731
    return {
        "received": one("SELECT value FROM counters WHERE name = 'received'"),
        "duplicates": one("SELECT value FROM counters WHERE name = 'duplicates'"),
        "quarantined": one("SELECT count(*) FROM quarantine"),
        "delivered": one("SELECT count(*) FROM events WHERE delivered_at IS NOT NULL"),
        "backlog": one("SELECT count(*) FROM events WHERE delivered_at IS NULL"),
        "dead_letters": one("SELECT count(*) FROM dead_letter"),
        "devices": one("SELECT count(*) FROM devices"),
    }


def data_n(page: str, element_id: str) -> int:
    m = re.search(rf'id="{element_id}"[^>]*data-n="(\d+)"', page)
    assert m, f"no #{element_id} with data-n in the page"
    return int(m.group(1))


async def test_page_shows_the_hubs_real_figures_and_why_it_needs_attention(start_hub, http, upstream):
    hub = await populate(start_hub, http, upstream)
    db = figures_from_db(hub)
    assert db == {
        "received": 30 + 13 + 5 + 4 + 7,
        "duplicates": 4,
        "quarantined": 1,
        "delivered": 46,
        "backlog": 7,
        "dead_letters": 1,
        "devices": 3,
    }

    async with http.get(hub.url + "/") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        page = await r.text()
    assert data_n(page, "backlog") == db["backlog"] == 7
    assert data_n(page, "delivered") == db["delivered"] == 46
    assert data_n(page, "devices-count") == db["devices"] == 3
    assert re.search(r'id="quarantine".*?data-n="1"', page) and re.search(r'id="dead-letters".*?data-n="1"', page)
    assert "event has no &#x27;mid&#x27; string" in page  # the top quarantine reason, index stripped
    assert "upstream answered 400" in page  # the dead letter's reason
    # Healthy or not, and why, in words.
    assert 'data-state="attention"' in page and "Needs attention" in page
    assert "rejects this hub&#x27;s API key" in page and "api_key_file" in page
    assert 'data-link="auth-failed"' in page
    # Chart: 24 hours, two bars each, and this hour's totals.
    assert page.count('<rect class="r"') == 24 and page.count('<rect class="d"') == 24
    assert re.search(r'id="received-24h">54<', page) and re.search(r'id="delivered-24h">46<', page)
    # The device table, the URL with its QR code, Sync now, the import link; no external assets.
    assert "tablet-a" in page and "tablet-b" in page
    assert f"{hub.url}/api/data/v1/telemetry" in page and '<svg viewBox="0 0 ' in page and 'class="qr"' in page
    assert 'action="/admin/sync' in page and 'name="token"' in page and 'href="/import"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # The device id is attacker-controlled: shown as text, never as markup.
    assert HOSTILE not in page and html_escaped(HOSTILE) in page
    assert hub.hub.admin_token not in page

    async with http.get(hub.url + "/status.json") as r:
        assert r.status == 200
        facts = await r.json()
    assert {
        k: facts["events"][k] for k in ("received", "duplicates", "quarantined", "delivered", "backlog", "dead_letters")
    } == {k: v for k, v in db.items() if k != "devices"}
    assert facts["devices"]["count"] == 3 and {d["did"] for d in facts["devices"]["recent"]} == {
        "tablet-a",
        "tablet-b",
        HOSTILE,
    }
    assert facts["state"] == "attention" and not facts["healthy"]
    assert [p["code"] for p in facts["problems"] if p["severity"] == "warning"] == ["upstream-key-rejected"]
    assert facts["upstream"]["link"] == "auth-failed" and facts["upstream"]["last_error"].startswith("auth")
    assert facts["upstream"]["last_delivery_at"] > time.time() - 60
    assert facts["quarantine"]["top_reasons"] == [{"reason": "event has no 'mid' string", "count": 1}]
    assert len(facts["dead_letters"]["top_reasons"]) == 1
    assert (
        sum(h["received"] for h in facts["hourly"]) == 54
    )  # new events: not duplicates, not quarantined and len(facts["hourly"]) == 24
    assert facts["requests"]["by_status"] == {"200": 5}

    # /health keeps its meaning (the store takes writes: 200) and now says what else is wrong.
    async with http.get(hub.url + "/health") as r:
        assert r.status == 200
        health = await r.json()
    assert health["healthy"] and health["problems"] == [] and health["backlog"] == 7
    assert health["link"] == "auth-failed" and "API key" in health["warnings"][0]


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def test_metrics_parse_and_match_the_store(start_hub, http, upstream):
    hub = await populate(start_hub, http, upstream)
    async with http.get(hub.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def v(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    db = figures_from_db(hub)
    assert v("telemetry_hub_events_received_total") == db["received"]
    assert v("telemetry_hub_events_duplicates_total") == db["duplicates"]
    assert v("telemetry_hub_events_quarantined_total") == db["quarantined"]
    assert v("telemetry_hub_events_delivered_total") == db["delivered"]
    assert v("telemetry_hub_backlog_events") == db["backlog"]
    assert v("telemetry_hub_dead_letter_events") == db["dead_letters"]
    assert v("telemetry_hub_devices") == db["devices"]
    assert v("telemetry_hub_http_requests_total", status="200") == 5
    assert (
        v("telemetry_hub_upstream_link", state="auth-failed") == 1 and v("telemetry_hub_upstream_link", state="up") == 0
    )
    assert v("telemetry_hub_upstream_errors_total", kind="auth") >= 1
    # One state gauge for alerting, the status page's own verdict: a rejected key needs attention (1).
    async with http.get(hub.url + "/status.json") as r:
        page_state = (await r.json())["state"]
    assert page_state == "attention" and v("telemetry_hub_state") == 1
    assert v("telemetry_hub_upstream_errors_total", kind="bad-request") >= 1
    # Histograms fed by the hooks: every upstream request and every commit observed once.
    ok = v("telemetry_hub_upstream_batch_seconds_count", outcome="ok")
    assert ok == len(upstream.batches) and v("telemetry_hub_upstream_batch_events_sum", outcome="ok") == 46
    assert v("telemetry_hub_store_commit_seconds_count") >= 1
    assert v("telemetry_hub_store_commit_events_sum") == db["received"]
    assert v("telemetry_hub_store_bytes") > 0 and v("telemetry_hub_store_accepting") == 1
    # A second scrape reads the same figures: nothing is counted twice.
    async with http.get(hub.url + "/metrics") as r:
        again = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(await r.text())
            for s in f.samples
        }
    assert again[("telemetry_hub_events_received_total", ())] == db["received"]


async def test_the_page_needs_no_token_on_loopback_by_default(start_hub, http):
    hub = await start_hub()
    for path in ("/", "/status.json", "/metrics"):
        async with http.get(hub.url + path) as r:
            assert r.status == 200, path
            assert "Set-Cookie" not in r.headers


async def test_the_page_asks_for_the_token_when_configured(start_hub, http):
    hub = await start_hub(auth={"status_page_requires_token": "yes"})
    token = hub.hub.admin_token

    async with http.get(hub.url + "/") as r:
        assert r.status == 401
        login = await r.text()
    assert 'action="/login"' in login and 'type="password"' in login and "Waiting" not in login
    for path in ("/status.json", "/metrics"):
        async with http.get(hub.url + path) as r:
            assert r.status == 401, path
    async with http.get(hub.url + "/", params={"token": "wrong"}) as r:
        assert r.status == 401

    # ?token= no longer signs in (it would sit in browser history and logs): the page says why.
    async with http.get(hub.url + "/", params={"token": token}) as r:
        assert r.status == 401 and "Set-Cookie" not in r.headers
        page = await r.text()
    assert token not in page and 'id="backlog"' not in page and "no longer sign you in" in page
    for path in ("/status.json", "/admin/dead-letters", "/admin/imports"):
        async with http.get(hub.url + path, params={"token": token}) as r:
            assert r.status == 401, path
            assert "no longer accepted in the address" in (await r.json())["params"]["errmsg"], path
    async with http.get(hub.url + "/status.json", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200 and token not in await r.text()
    async with http.get(hub.url + "/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200

    # The login form: a wrong token is refused, the right one buys the cookie.
    async with http.post(hub.url + "/login", data={"token": "nope"}, allow_redirects=False) as r:
        assert r.status == 401 and "neither the admin token nor a sign-in code" in await r.text()
        assert "Set-Cookie" not in r.headers
    async with http.post(hub.url + "/login", data={"token": token}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/"
        value = r.cookies["hub_status"].value
        assert r.cookies["hub_status"]["httponly"] and r.cookies["hub_status"]["samesite"] == "Strict"
    assert value and token not in value
    for path in ("/", "/status.json"):
        async with http.get(hub.url + path, headers={"Cookie": f"hub_status={value}"}) as r:
            assert r.status == 200, path
            assert token not in await r.text()
    async with http.get(hub.url + "/", headers={"Cookie": "hub_status=forged"}) as r:
        assert r.status == 401
    # The cookie only lets a browser read: admin actions still need the token itself.
    async with http.post(hub.url + "/admin/sync", headers={"Cookie": f"hub_status={value}"}) as r:
        assert r.status == 401
    async with http.post(hub.url + "/logout", headers={"Cookie": f"hub_status={value}"}, allow_redirects=False) as r:
        assert r.status == 303 and 'hub_status=""' in r.headers["Set-Cookie"]
    async with http.get(hub.url + "/", headers={"Cookie": f"hub_status={value}"}) as r:
        assert r.status == 401  # logout ended the session on the hub, not only in this browser


async def test_listening_on_every_address_needs_the_token_and_lists_the_lan_urls(start_hub, http):
    hub = await start_hub(server={"host": "0.0.0.0"})  # "" would bind each family to its own ephemeral port
    async with http.get(hub.url + "/") as r:
        assert r.status == 401  # auto: reachable from the LAN, so the token is needed
    async with http.get(hub.url + "/status.json", headers={"Authorization": f"Bearer {hub.hub.admin_token}"}) as r:
        facts = await r.json()
    lan = await asyncio.to_thread(local_urls, hub.hub.port, "/api/data/v1/telemetry")
    assert facts["device_urls"] == (lan or [f"{hub.url}/api/data/v1/telemetry"])
    assert all("127.0.0.1" not in u and "[::1]" not in u for u in lan)
    assert facts["device_urls_note"] is None


def test_token_rule_auto_means_yes_unless_loopback(tmp_path):
    def needs(host: str, mode: str = "auto") -> bool:
        return page_needs_token(hub_config(tmp_path, server={"host": host}, auth={"status_page_requires_token": mode}))

    assert not needs("127.0.0.1") and not needs("localhost") and not needs("::1")
    assert needs("") and needs("0.0.0.0") and needs("192.168.1.20") and needs("pi.local")
    assert needs("127.0.0.1", "yes") and not needs("", "no")


@pytest.mark.slow
async def test_unreachable_upstream_with_a_backlog_is_reported_after_health_upstream_down_minutes(
    start_hub, http, upstream
):
    await upstream.down()
    hub = await start_hub(
        upstream={"url": upstream.base_url, **FAST, "backoff_initial": 30, "backoff_max": 60},
        health={"upstream_down_minutes": 0.1},
    )
    await post(http, hub, make_events(3, did="tablet-a"), "tablet-a")
    await wait_for(lambda: hub.hub.forwarder.state.link == "down", what="the link down")

    async def status() -> dict:
        async with http.get(hub.url + "/status.json") as r:
            return await r.json()

    # Just down: links drop for a while and that needs nobody; after 6 s (0.1 minutes) it does.
    assert "upstream-unreachable" not in {p["code"] for p in (await status())["problems"]}
    deadline = time.monotonic() + 30
    while (facts := await status())["state"] != "attention" and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert facts["state"] == "attention"
    problem = next(p for p in facts["problems"] if p["code"] == "upstream-unreachable")
    assert "unreachable" in problem["message"] and "3 events are waiting" in problem["message"]
    assert facts["upstream"]["unreachable_since"] and "cannot connect" in facts["upstream"]["last_error"]
    async with http.get(hub.url + "/health") as r:
        assert r.status == 200  # the hub still stores: not a 503


async def test_dead_letter_and_store_warnings_follow_the_health_section(start_hub, http, upstream):
    # With the defaults this hub has one dead letter (a note) and a nearly empty store (nothing to say).
    hub = await populate(start_hub, http, upstream, health={"dead_letters": 1, "store_warn_fraction": 0.00001})
    async with http.get(hub.url + "/status.json") as r:
        facts = await r.json()
    severity = {p["code"]: p["severity"] for p in facts["problems"]}
    assert severity["dead-letters"] == "warning" and severity["store-nearly-full"] == "warning", severity
    assert facts["store"]["warn_fraction"] == 0.00001
    async with http.get(hub.url + "/") as r:
        page = await r.text()
        assert 'class="bar warn"' in page, re.findall(r'class="bar[^"]*"[^>]*>', page)


async def test_a_full_store_is_failing_everywhere(start_hub, http):
    hub = await start_hub(store={"max_bytes": 50_000})
    async with http.get(hub.url + "/health") as r:
        assert r.status == 503
    async with http.get(hub.url + "/") as r:
        page = await r.text()
    assert 'data-state="failing"' in page and "store.max_bytes" in page
    code, out, err = await cli("status", "--url", hub.url)
    assert code == 1, (out, err)
    assert "NOT WORKING" in out and "store.max_bytes" in out


async def cli(*args: str) -> tuple[int, str, str]:
    """Run `telemetry-hub ...` as branch IT would, in a subprocess (the hub runs in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_cli_status_prints_the_facts_and_exits_by_health(start_hub, http):
    hub = await start_hub(auth={"status_page_requires_token": "yes"})
    await post(http, hub, make_events(6, did="tablet-a"), "tablet-a")
    # A device id is attacker-controlled: it must not send escape sequences to the admin's terminal.
    body, headers = js_request(make_events(1, did="evil\x1b]0;pwned\x07\x1b[2J"))
    async with http.post(hub.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
        assert r.status == 200
    token = hub.hub.admin_token

    code, out, err = await cli("status", "--url", hub.url, "--token", token)
    assert code == 0, (out, err)
    lines = dict(re.findall(r"^([A-Z][\w ]+?):\s+(.*)$", out, re.M))
    assert lines["State"] == "Working normally"
    assert lines["Waiting"] == "7 events for upstream"
    assert lines["Devices"] == "2 (latest evil\\x1b]0;pwned\\x07\\x1b[2J, just now)"
    assert "\x1b" not in out and "\x07" not in out
    assert lines["Device URL"] == f"{hub.url}/api/data/v1/telemetry"
    assert token not in out

    code, out, err = await cli("status", "--url", hub.url, "--token", token, "--json")
    assert code == 0, err
    facts = json.loads(out)
    assert facts["events"]["backlog"] == 7 and facts["healthy"] is True

    code, out, err = await cli("status", "--url", hub.url, "--token", "wrong")
    assert code == 1 and "401" in err and "admin token" in err

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    code, out, err = await cli("status", "--url", f"http://127.0.0.1:{closed}")
    assert code == 1 and "cannot reach the hub" in err


async def test_sync_now_with_a_wrong_token_says_so_on_the_page(start_hub, http):
    hub = await start_hub()
    async with http.post(
        hub.url + "/admin/sync", data={"token": "wrong"}, headers={"Accept": "text/html"}, allow_redirects=False
    ) as r:
        assert r.status == 303 and r.headers["Location"] == "/?synced=denied"
    async with http.get(hub.url + "/?synced=denied") as r:
        page = await r.text()
    assert "admin token was wrong" in page and "wrong" not in page.split("admin token was wrong")[0][-200:]
