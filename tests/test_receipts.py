"""Receipts: a device asks what became of its events, from a real hub with a real (fake) upstream."""

from __future__ import annotations

import gzip
import json
import sqlite3
import uuid

from support.drive import FAST, send, wait_for
from support.events import make_events

from hub.store import SCHEMA_VERSION
from hub.store.migrations import _MIGRATIONS

PATH = "/api/data/v1/telemetry/receipts"


async def ask(http, hub, mids, headers=None, status=200):
    async with http.post(hub.url + PATH, json={"mids": mids}, headers=headers or {}) as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def test_receipts_name_delivered_waiting_quarantined_dead_lettered_and_unknown(start_hub, http, upstream):
    first = make_events(20, did="tablet-1")
    refused = first[5]["mid"]
    upstream.reject_mids = {refused}
    hub = await start_hub(upstream={"url": upstream.url, **FAST})
    await send(http, hub, first, "tablet-1")
    await wait_for(lambda: hub.hub.store.stats.delivered == 19 and hub.hub.store.stats.dead_letters == 1, what="sent")
    # The link goes down: the next events wait on the hub.
    await upstream.down()
    later = make_events(5, did="tablet-1")
    broken = {"mid": "broken-" + uuid.uuid4().hex, "ets": 1}  # no eid: quarantined
    answer = await send(http, hub, [*later, broken], "tablet-1")
    assert answer["result"]["quarantined"] == [{"index": 5, "reason": "event 5 has no 'eid' string"}]
    never = "never-sent-" + uuid.uuid4().hex
    asked = [e["mid"] for e in first] + [e["mid"] for e in later] + [broken["mid"], never, first[0]["mid"]]

    body = await ask(http, hub, asked)
    assert body["id"] == "api.telemetry" and body["params"]["status"] == "successful"
    result = body["result"]
    assert result["delivered"] == [e["mid"] for e in first if e["mid"] != refused]
    assert result["waiting"] == [e["mid"] for e in later]
    assert result["quarantined"] == [{"mid": broken["mid"], "reason": "event has no 'eid' string"}]
    [dead] = result["dead_letter"]
    assert dead["mid"] == refused and "400" in dead["reason"]
    assert result["unknown"] == [never]  # and the repeated mid is answered once
    # What the receipt says is what the store holds.
    delivered = {m for (m,) in hub.rows("SELECT mid FROM events WHERE delivered_at IS NOT NULL")}
    assert set(result["delivered"]) == delivered & set(asked)

    # The link is back: what waited is delivered, and the receipt says so.
    await upstream.up()
    await wait_for(lambda: hub.hub.store.stats.backlog == 0, what="the backlog delivered")
    result = (await ask(http, hub, [e["mid"] for e in later]))["result"]
    assert result["delivered"] == [e["mid"] for e in later] and result["waiting"] == []


async def test_receipts_need_the_device_key_and_bounded_well_formed_asks(start_hub, http, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("key-1\n")
    hub = await start_hub(auth={"device_keys_file": str(keys)}, limits={"max_events_per_request": 10})
    events = make_events(3)
    body, headers = (
        json.dumps({"id": "ekstep.telemetry", "events": events}).encode(),
        {"Authorization": "Bearer key-1"},
    )
    async with http.post(hub.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
        assert r.status == 200
    mids = [e["mid"] for e in events]
    refused = await ask(http, hub, mids, status=401)
    assert refused["params"]["err"] == "UNAUTHORIZED" and "API key" in refused["params"]["errmsg"]
    assert (await ask(http, hub, mids, {"Authorization": "Bearer wrong"}, status=401))["result"] == {}
    assert (await ask(http, hub, mids, headers))["result"]["waiting"] == mids
    too_many = await ask(http, hub, [str(i) for i in range(11)], headers, status=413)
    assert "limits.max_events_per_request" in too_many["params"]["errmsg"]
    assert "mids[1]" in (await ask(http, hub, ["a", 7], headers, status=400))["params"]["errmsg"]
    assert "empty" in (await ask(http, hub, [], headers, status=400))["params"]["errmsg"]
    async with http.post(hub.url + PATH, data=b"not json", headers=headers) as r:
        assert r.status == 400 and "not JSON" in (await r.json())["params"]["errmsg"]
    # gzip, as the mobile app sends everything; CORS for web players, as on the ingest path.
    gz = gzip.compress(json.dumps({"mids": mids, "params": {"msgid": "m-1"}}).encode())
    async with http.post(
        hub.url + PATH, data=gz, headers={**headers, "Content-Encoding": "gzip", "Origin": "http://player"}
    ) as r:
        answer = await r.json()
        assert r.status == 200 and answer["result"]["waiting"] == mids and answer["params"]["msgid"] == "m-1"
        assert r.headers["Access-Control-Allow-Origin"] == "http://player"
    async with http.options(hub.url + PATH, headers={"Origin": "http://player"}) as r:
        assert r.status == 204 and "POST" in r.headers["Access-Control-Allow-Methods"]


async def test_a_version_4_store_gains_the_quarantine_mid_index(open_store, tmp_path):
    path = tmp_path / "hub.db"
    con = sqlite3.connect(path)
    for step in _MIGRATIONS[:4]:
        con.executescript(step)
    con.execute("PRAGMA user_version=4")
    con.execute(
        "INSERT INTO quarantine (received_at, source, did, mid, reason, raw, size) "
        "VALUES (1, 'api', 'd', 'q-1', 'event 0 has no ''eid'' string', x'7b7d', 2)"
    )
    con.commit()
    con.close()
    store = await open_store(path)
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        plan = con.execute("EXPLAIN QUERY PLAN SELECT reason FROM quarantine WHERE mid = 'q-1'").fetchall()
    finally:
        con.close()
    assert any("quarantine_mid" in str(row) for row in plan)
    receipt = await store.read.receipts(["q-1", "other"])
    assert (receipt.quarantined, receipt.unknown) == ([("q-1", "event has no 'eid' string")], ["other"])
