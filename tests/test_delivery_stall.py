"""A delivery that stalls for no known reason is visible: /health warns, the metric and status show the age.

The fake upstream accepts the connection and never answers the batch (hang_seconds), so the link
stays up as far as the hub knows, nothing times out within the test, and the oldest waiting event
does not move. health.stall_minutes is set to 0.02 (1.2 s).
"""

from __future__ import annotations

import asyncio
import re
import time

from support.events import js_request, make_events

PATH = "/api/data/v1/telemetry"
AGE = re.compile(r"^telemetry_hub_oldest_waiting_age_seconds ([0-9.e+-]+)$", re.M)


async def health(http, hub) -> dict:
    async with http.get(hub.url + "/health") as r:
        return await r.json(content_type=None)


async def age_metric(http, hub) -> float:
    async with http.get(hub.url + "/metrics") as r:
        assert r.status == 200
        found = AGE.search(await r.text())
    assert found, "telemetry_hub_oldest_waiting_age_seconds is missing from /metrics"
    return float(found.group(1))


async def test_a_hung_upstream_shows_as_a_stalled_delivery(start_hub, http, upstream):
    upstream.configure(hang_seconds=120)  # accepts the batch and never answers it
    hub = await start_hub(
        upstream={"url": upstream.url, "timeout": 120, "probe_interval": 0.2},
        health={"stall_minutes": 0.02},
        server={"shutdown_timeout": 1.0},
    )
    assert await age_metric(http, hub) == 0.0  # nothing waits yet
    body, headers = js_request(make_events(5))
    async with http.post(hub.url + PATH, data=body, headers=headers) as r:
        assert r.status == 200
    posted = time.time()
    deadline = time.monotonic() + 8
    while True:
        answer = await health(http, hub)
        stall = [w for w in answer["warnings"] if "stalled" in w]
        if stall or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert stall, f"no stall warning within 8 s: {answer}"
    assert answer["healthy"] is True and answer["state"] == "attention"  # a warning, not refusing data
    assert "telemetry-hub sync" in stall[0] and answer["backlog"] == 5
    assert upstream.requests >= 1 and not upstream.batches  # the batch went out and hangs there
    assert 0 < answer["oldest_waiting_age_s"] <= time.time() - posted + 1

    first = await age_metric(http, hub)
    await asyncio.sleep(1.1)
    second = await age_metric(http, hub)
    assert first > 0 and second >= first + 1.0, (first, second)

    async with http.get(hub.url + "/status.json") as r:
        facts = await r.json()
    assert "delivery-stalled" in [p["code"] for p in facts["problems"]]
    assert facts["upstream"]["oldest_waiting_age_s"] >= second - 0.5
    async with http.get(hub.url + "/") as r:
        page = await r.text()
    assert 'id="oldest-waiting"' in page and "Delivery to the institute" in page
