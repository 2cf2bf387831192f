"""hub.share import and export: Share Telemetry files into a real hub's store (ledger, dedup, all-or-nothing), export, CLI, HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sqlite3
import sys
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.events import make_events, mobile_request
from support.hubs import RunningHub
from support.sharefiles import (
    DID,
    SAMPLE_ARCHIVE,
    SAMPLE_COUNTS,
    build_archive,
    build_gsa,
    build_plain,
    event_bytes,
    make_archive,
    odd_events,
    write_zip,
    zip_bomb,
)

from hub import __version__
from hub.schema import SchemaChecker
from hub.share import (
    FORMAT_ARCHIVE,
    FORMAT_GSA,
    Importer,
    ImportReport,
    NothingToExport,
    export_archive,
    parse_since,
    read_share_file,
)

SAMPLE_TOTAL = sum(SAMPLE_COUNTS)


# ---- helpers ---------------------------------------------------------------------------------------------------


def service(rh: RunningHub) -> Importer:
    """The same importer the hub mounts, on the running hub's store."""
    h = rh.hub
    return Importer(h.store, h.cfg, schema=SchemaChecker())


def snapshot(rh: RunningHub) -> dict[str, list[tuple]]:
    """Everything an import may change, read from the SQLite file by an outsider."""
    return {
        "events": rh.rows("SELECT seq, mid, did, source, raw, delivered_at, batch_id FROM stored_events ORDER BY seq"),
        "quarantine": rh.rows("SELECT id, source, did, mid, reason, raw FROM quarantine ORDER BY id"),
        "imports": rh.rows("SELECT sha256, name, imported_at, format, report FROM imports ORDER BY sha256"),
        "devices": rh.rows("SELECT did, events FROM devices ORDER BY did"),
    }


def raws(rh: RunningHub) -> dict[str, bytes]:
    return {mid: bytes(raw) for mid, raw in rh.rows("SELECT mid, raw FROM stored_events")}


def compact(event: dict[str, Any]) -> bytes:
    """An event as the mobile app serialises it (what events.mobile_request sends)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


async def post_events(http: aiohttp.ClientSession, rh: RunningHub, events: list[dict[str, Any]]) -> dict:
    body, headers = mobile_request(events, did=events[0]["context"]["did"])
    async with http.post(rh.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["result"]


def form(files: list[tuple[str, bytes]], token: str | None = None) -> aiohttp.FormData:
    data = aiohttp.FormData()
    if token is not None:
        data.add_field("token", token)
    for name, content in files:
        data.add_field("file", content, filename=name, content_type="application/octet-stream")
    return data


async def hub_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    """`python -m hub ...` as a subprocess, without blocking the loop the in-process hub runs on."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TELEMETRY_HUB_ADMIN_TOKEN", "STATE_DIRECTORY", "TELEMETRY_HUB_CONFIG")
    }
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        *args,
        cwd=cwd,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


# ---- real and contract-built files -----------------------------------------------------------------------------


async def test_real_sample_archive_stored_byte_identical(start_hub) -> None:
    rh = await start_hub()
    report = await service(rh).import_file(SAMPLE_ARCHIVE, "telemetry.zip")
    assert report.ok and not report.already_imported
    assert (report.format, report.batches, report.manifest_events, report.found) == (FORMAT_ARCHIVE, 2, 93, 93)
    assert (report.new, report.duplicates, report.quarantined) == (SAMPLE_TOTAL, 0, 0)
    stored = [bytes(r) for (r,) in rh.rows("SELECT raw FROM stored_events ORDER BY seq")]
    assert len(stored) == SAMPLE_TOTAL
    with zipfile.ZipFile(SAMPLE_ARCHIVE) as z:
        items = json.loads(z.read("manifest.json"))["archive"]["items"]
        assert [i["eventsCount"] for i in items] == list(SAMPLE_COUNTS)
        start = 0
        for item in items:
            batch = gzip.decompress(z.read(item["file"]))
            mine = stored[start : start + item["eventsCount"]]
            assert b'"events":[' + b",".join(mine) + b"]" in batch  # the batch's own bytes, in order
            start += item["eventsCount"]
    assert rh.rows("SELECT DISTINCT source FROM events") == [("import:telemetry.zip",)]
    ((name, fmt, body),) = rh.rows("SELECT name, format, report FROM imports")
    assert (name, fmt) == ("telemetry.zip", FORMAT_ARCHIVE)
    assert json.loads(body)["new"] == SAMPLE_TOTAL  # the ledger holds the committed counts


@pytest.mark.parametrize("kind", ["mobile", "desktop", "mobile-mangled", "gsa", "ndjson-gz"])
async def test_contract_built_files(start_hub, tmp_path: Path, kind: str) -> None:
    rh = await start_hub()
    batches = [event_bytes(200), event_bytes(37), event_bytes(1)]
    path = tmp_path / f"share-{kind}"  # no extension: the format comes from the bytes
    if kind == "gsa":
        build_gsa(path, batches)
    elif kind == "ndjson-gz":
        build_plain(path, [e for b in batches for e in b], "ndjson", gzipped=True)
    else:
        build_archive(path, batches, style=kind.split("-")[0], mangled=kind.endswith("mangled"))
    report = await service(rh).import_file(path)
    assert report.ok, report.error
    assert report.found == report.new == 238 and report.quarantined == 0
    assert report.format == {"gsa": FORMAT_GSA, "ndjson-gz": "ndjson+gzip"}.get(kind, FORMAT_ARCHIVE)
    assert sorted(raws(rh).values()) == sorted(e for b in batches for e in b)
    if kind in ("mobile", "gsa"):
        assert report.device == DID
    assert rh.rows("SELECT count(*) FROM devices WHERE did = ?", (DID,)) == [(1,)]


async def test_odd_events_kept_byte_exact_and_bad_ones_quarantined(start_hub, tmp_path: Path) -> None:
    rh = await start_hub()
    odd = odd_events()  # only the first has a numeric ets; one has an integer orjson cannot read
    good = event_bytes(10)
    build_archive(tmp_path / "odd.zip", [good + odd[:1], odd[1:]])
    report = await service(rh).import_file(tmp_path / "odd.zip")
    assert report.ok and (report.new, report.quarantined) == (11, 4)
    assert all("has no numeric 'ets'" in r and r.startswith("batch ") for r in report.quarantine_reasons)
    assert sorted(raws(rh).values()) == sorted(good + odd[:1])
    assert sorted(bytes(r) for (r,) in rh.rows("SELECT raw FROM quarantine")) == sorted(odd[1:])


# ---- dedup: by file, and by mid across file and API -------------------------------------------------------------


async def test_file_imported_twice_adds_nothing(start_hub, http, tmp_path: Path) -> None:
    rh = await start_hub()
    svc = service(rh)
    build_archive(tmp_path / "first.zip", [event_bytes(40)])
    first = await svc.import_file(tmp_path / "first.zip")
    assert first.new == 40
    before = snapshot(rh)
    again = await svc.import_file(tmp_path / "first.zip", "renamed by whatsapp.bin")
    assert again.ok and again.already_imported and again.new == 0
    assert again.imported_as == "first.zip" and again.sha256 == first.sha256
    assert "already imported on" in again.headline()
    # Through HTTP too: recognised from the ledger, nothing added.
    async with http.post(
        rh.url + "/admin/import",
        data=form([("x.zip", (tmp_path / "first.zip").read_bytes())]),
        headers={"Authorization": f"Bearer {rh.hub.admin_token}"},
    ) as r:
        assert r.status == 200
        (answer,) = await r.json()
    assert answer["already_imported"] is True and answer["new"] == 0
    assert snapshot(rh) == before


@pytest.mark.parametrize("order", ["file-first", "api-first"])
async def test_same_events_by_file_and_api_stored_once(start_hub, http, tmp_path: Path, order: str) -> None:
    rh = await start_hub()
    events = make_events(20, did="phone-7")
    extra = make_events(5, did="phone-7")
    build_archive(tmp_path / "share.zip", [[compact(e) for e in events]], did="phone-7")
    api_events = events[:10] + extra
    if order == "file-first":
        report = await service(rh).import_file(tmp_path / "share.zip")
        result = await post_events(http, rh, api_events)
        assert (report.new, report.duplicates) == (20, 0)
        assert (result["accepted"], result["duplicates"]) == (5, 10)
    else:
        result = await post_events(http, rh, api_events)
        report = await service(rh).import_file(tmp_path / "share.zip")
        assert (result["accepted"], result["duplicates"]) == (15, 0)
        assert (report.new, report.duplicates) == (10, 10)
    stored = raws(rh)
    assert len(stored) == 25
    assert all(stored[e["mid"]] == compact(e) for e in events + extra)


# ---- export and the round trip between hubs -------------------------------------------------------------------


@pytest.mark.slow
async def test_round_trip_between_hubs(start_hub, http, tmp_path: Path) -> None:
    a = await start_hub(server={"data_dir": str(tmp_path / "a")})
    b = await start_hub(server={"data_dir": str(tmp_path / "b")})
    for chunk in range(3):
        await post_events(http, a, make_events(100, did=f"phone-{chunk}"))
    assert (await service(a).import_file(SAMPLE_ARCHIVE)).new == SAMPLE_TOTAL
    total = 300 + SAMPLE_TOTAL
    before = snapshot(a)

    rc, out, err = await hub_cli("export", "--data-dir", str(tmp_path / "a"), "--out", str(tmp_path / "dir.zip"))
    assert rc == 0, err
    assert f"{total} events" in out and "Nothing was marked delivered" in out
    rc, out, err = await hub_cli(
        "export", "--url", a.url, f"--token={a.hub.admin_token}", "--out", str(tmp_path / "url.zip"), "--json"
    )
    assert rc == 0, err
    assert json.loads(out)["events"] == total
    assert snapshot(a) == before  # export marks nothing delivered, changes nothing
    assert a.rows("SELECT count(*) FROM events WHERE delivered_at IS NULL") == [(total,)]

    for path in (tmp_path / "dir.zip", tmp_path / "url.zip"):
        share = read_share_file(path)
        assert share.event_count == share.manifest_events == total
        assert all(len(batch.events) <= 200 for batch in share.batches) and len(share.batches) >= 2
        assert share.device_id == a.hub.hub_id
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
        assert manifest["producer"] == {"id": "telemetry-hub", "ver": __version__, "pid": "telemetry-hub"}

    rc, out, err = await hub_cli("import", "--url", b.url, f"--token={b.hub.admin_token}", str(tmp_path / "dir.zip"))
    assert rc == 0, err
    assert f"imported: {total} new events" in out
    assert raws(b) == raws(a)  # every event byte-identical
    # Devices are those that sent the events, not the hub that carried them.
    devices = {d for (d,) in b.rows("SELECT DISTINCT did FROM events")}
    assert devices == {d for (d,) in a.rows("SELECT DISTINCT did FROM events")} and a.hub.hub_id not in devices
    settled = snapshot(b)

    rc, out, err = await hub_cli(
        "import", "--data-dir", str(tmp_path / "b"), "--json", str(tmp_path / "dir.zip"), str(tmp_path / "url.zip")
    )
    assert rc == 0, err
    same, other = (ImportReport.from_json(d) for d in json.loads(out))
    assert same.already_imported and same.new == 0
    assert not other.already_imported and (other.new, other.duplicates) == (0, total)
    after = snapshot(b)
    assert after["events"] == settled["events"] and after["quarantine"] == settled["quarantine"]
    assert len(after["imports"]) == len(settled["imports"]) + 1  # the second archive is in the ledger now


async def test_export_pending_all_since(start_hub, http, tmp_path: Path) -> None:
    rh = await start_hub()
    await post_events(http, rh, make_events(30))

    con = sqlite3.connect(rh.db_path, timeout=10)  # as an outsider would: the store has no such operation
    with con:
        con.execute("UPDATE events SET delivered_at = 1 WHERE seq <= 10")
        con.execute("UPDATE events SET received_at = 1000 WHERE seq <= 15")
    con.close()
    db, hid = rh.db_path, rh.hub.hub_id
    assert export_archive(db, tmp_path / "p.zip", hub_id=hid).events == 20
    assert export_archive(db, tmp_path / "a.zip", hub_id=hid, pending=False).events == 30
    assert export_archive(db, tmp_path / "s.zip", hub_id=hid, pending=False, since_ms=2000).events == 15
    assert export_archive(db, tmp_path / "ps.zip", hub_id=hid, since_ms=2000).events == 15
    with pytest.raises(NothingToExport, match="nothing to export"):
        export_archive(db, tmp_path / "none.zip", hub_id=hid, since_ms=parse_since("2999-01-01"))
    assert not (tmp_path / "none.zip").exists()
    assert parse_since("1700000000000") == 1700000000000
    assert parse_since("2024-05-01T00:00:00Z") == 1714521600000
    with pytest.raises(ValueError, match="ISO date"):
        parse_since("last tuesday")

    auth = {"Authorization": f"Bearer {rh.hub.admin_token}"}
    async with http.get(rh.url + "/admin/export", params={"all": "1", "since": "2000"}, headers=auth) as r:
        assert r.status == 200 and r.headers["X-Export-Events"] == "15"
        assert r.content_type == "application/zip"
        (tmp_path / "h.zip").write_bytes(await r.read())
    assert read_share_file(tmp_path / "h.zip").event_count == 15
    async with http.get(rh.url + "/admin/export", params={"since": "2999-01-01"}, headers=auth) as r:
        assert r.status == 404 and "nothing to export" in (await r.json())["params"]["errmsg"]
    async with http.get(rh.url + "/admin/export") as r:
        assert r.status == 401
    assert list((rh.hub.data_dir / "uploads").iterdir()) == []
    assert rh.rows("SELECT count(*) FROM events WHERE delivered_at IS NULL") == [(20,)]


# ---- hostile files ----------------------------------------------------------------------------------------------


def _archive_edit(tmp: Path, edit) -> Path:
    arch = make_archive([event_bytes(22), event_bytes(3)])
    edit(arch)
    return write_zip(tmp / "bad.zip", arch.entries())


def _truncated(tmp: Path) -> Path:
    build_archive(tmp / "full.zip", [event_bytes(50)])
    data = (tmp / "full.zip").read_bytes()
    (tmp / "cut.zip").write_bytes(data[: len(data) // 2])
    return tmp / "cut.zip"


def _dotdot(tmp: Path) -> Path:
    arch = make_archive([event_bytes(5)])
    return write_zip(tmp / "evil.zip", {**arch.entries(), "../../home/evil": b"x"})


def _wrong_count(arch) -> None:
    arch.manifest["archive"]["items"][1]["eventsCount"] = 4


def _not_gzip(arch) -> None:
    arch.files[arch.manifest["archive"]["items"][1]["file"]] = b'{"events":[]}'


def _garbage_gsa(tmp: Path) -> Path:
    path = tmp / "tm_phone_1582808084950.gsa"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    return path


HOSTILE = {
    "truncated-zip": (_truncated, "truncated or corrupt"),
    "zip-bomb": (lambda tmp: zip_bomb(tmp / "bomb.zip"), "zip bomb"),
    "dotdot-name": (_dotdot, "'..'"),
    "wrong-count": (lambda tmp: _archive_edit(tmp, _wrong_count), "says 4 events but the batch holds 3"),
    "batch-not-gzip": (lambda tmp: _archive_edit(tmp, _not_gzip), "is not gzip data"),
    "garbage-gsa": (_garbage_gsa, "corrupt"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_file_refused_store_unchanged(start_hub, http, tmp_path: Path, case: str) -> None:
    rh = await start_hub()
    await post_events(http, rh, make_events(5))
    build_archive(tmp_path / "earlier.zip", [event_bytes(3), odd_events()[1:2]])
    await service(rh).import_file(tmp_path / "earlier.zip")
    make, reason = HOSTILE[case]
    path = make(tmp_path)
    before = snapshot(rh)
    report = await service(rh).import_file(path)
    assert not report.ok and report.new == 0
    assert report.error.startswith(f"{path.name}: ") and reason in report.error, report.error
    assert snapshot(rh) == before
    # Uploaded, the report names the file as sent, not the hub's temp file.
    async with http.post(
        rh.url + "/admin/import",
        data=form([("from-student.zip", path.read_bytes())]),
        headers={"Authorization": f"Bearer {rh.hub.admin_token}"},
    ) as r:
        assert r.status == 200
        (answer,) = await r.json()
    assert answer["error"].startswith("from-student.zip: ") and reason in answer["error"]
    assert ".upload-" not in answer["error"]
    assert snapshot(rh) == before


async def test_full_store_refuses_import(start_hub, http, tmp_path: Path) -> None:
    rh = await start_hub(store={"max_bytes": 1})
    build_archive(tmp_path / "a.zip", [event_bytes(5)])
    before = snapshot(rh)
    report = await service(rh).import_file(tmp_path / "a.zip")
    assert not report.ok and "cannot store telemetry now" in report.error and "store.max_bytes" in report.error
    async with http.post(
        rh.url + "/admin/import",
        data=form([("a.zip", (tmp_path / "a.zip").read_bytes())]),
        headers={"Authorization": f"Bearer {rh.hub.admin_token}"},
    ) as r:
        assert r.status == 503 and "store.max_bytes" in (await r.json())["params"]["errmsg"]
    assert snapshot(rh) == before


# ---- CLI ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_cli_exit_codes(start_hub, tmp_path: Path) -> None:
    rh = await start_hub()
    data_dir = str(rh.hub.data_dir)
    build_archive(tmp_path / "good.zip", [event_bytes(12)])
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 this is not really a zip")

    rc, out, err = await hub_cli(
        "import",
        "--data-dir",
        data_dir,
        str(tmp_path / "good.zip"),
        str(tmp_path / "bad.zip"),
        str(tmp_path / "missing.zip"),
    )
    assert rc == 1, err
    assert "good.zip: imported: 12 new events" in out
    assert "bad.zip: FAILED" in out and "missing.zip: FAILED" in out and "cannot read the file" in out
    assert rh.rows("SELECT count(*) FROM events") == [(12,)]  # the good file went in on its own

    rc, out, err = await hub_cli("import", "--data-dir", data_dir, str(tmp_path / "good.zip"))
    assert rc == 0 and "already imported on" in out, err

    # The token from the environment, over HTTP.
    rc, out, err = await hub_cli(
        "import",
        "--url",
        rh.url,
        "--json",
        str(tmp_path / "good.zip"),
        env={"TELEMETRY_HUB_ADMIN_TOKEN": rh.hub.admin_token},
    )
    assert rc == 0, err
    assert json.loads(out)[0]["already_imported"] is True
    rc, out, err = await hub_cli("import", "--url", rh.url, "--token", "wrong", str(tmp_path / "good.zip"))
    assert rc == 1 and "401" in err and "admin token" in err

    rc, out, err = await hub_cli("import", "--data-dir", str(tmp_path / "nowhere"), str(tmp_path / "good.zip"))
    assert rc == 1 and "no hub database" in err
    assert not (tmp_path / "nowhere").exists()


# ---- HTTP ----------------------------------------------------------------------------------------------------------


async def test_http_admin_token_required(start_hub, http) -> None:
    rh = await start_hub()
    sample = SAMPLE_ARCHIVE.read_bytes()
    before = snapshot(rh)
    for token, headers in ((None, {}), ("wrong", {}), (None, {"Authorization": "Bearer wrong"})):
        async with http.post(rh.url + "/admin/import", data=form([("a.zip", sample)], token), headers=headers) as r:
            assert r.status == 401
            body = await r.json()
            assert body["params"]["status"] == "failed" and body["params"]["err"] == "UNAUTHORIZED"
            assert "admin token" in body["params"]["errmsg"]
    # A token after the file is too late: the file is not even saved.
    late = aiohttp.FormData()
    late.add_field("file", sample, filename="a.zip")
    late.add_field("token", rh.hub.admin_token)
    async with http.post(rh.url + "/admin/import", data=late) as r:
        assert r.status == 401 and "before the files" in (await r.json())["params"]["errmsg"]
    for path in ("/admin/imports", "/admin/export"):
        async with http.get(rh.url + path, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
    assert snapshot(rh) == before
    assert list((rh.hub.data_dir / "uploads").iterdir()) == []


async def test_http_two_files_two_reports_and_ledger(start_hub, http, tmp_path: Path) -> None:
    rh = await start_hub()
    build_gsa(tmp_path / "old.gsa", [event_bytes(4), event_bytes(2)])
    files = [("telemetry.zip", SAMPLE_ARCHIVE.read_bytes()), ("old.gsa", (tmp_path / "old.gsa").read_bytes())]
    async with http.post(rh.url + "/admin/import", data=form(files, rh.hub.admin_token)) as r:
        assert r.status == 200 and r.content_type == "application/json"
        reports = await r.json()
    assert [(x["file"], x["new"], x["format"]) for x in reports] == [
        ("telemetry.zip", SAMPLE_TOTAL, FORMAT_ARCHIVE),
        ("old.gsa", 6, FORMAT_GSA),
    ]
    assert rh.rows("SELECT count(*) FROM events") == [(SAMPLE_TOTAL + 6,)]
    async with http.get(rh.url + "/admin/imports", headers={"Authorization": f"Bearer {rh.hub.admin_token}"}) as r:
        ledger = await r.json()
    assert [x["name"] for x in ledger] == ["old.gsa", "telemetry.zip"]  # newest first
    assert ledger[0]["report"]["new"] == 6 and ledger[1]["report"]["found"] == SAMPLE_TOTAL
    assert list((rh.hub.data_dir / "uploads").iterdir()) == []


async def test_http_file_over_limit_is_413(start_hub, http) -> None:
    rh = await start_hub(share={"max_file_bytes": 4000})
    async with http.post(
        rh.url + "/admin/import",
        data=form([("big.zip", SAMPLE_ARCHIVE.read_bytes())]),
        headers={"Authorization": f"Bearer {rh.hub.admin_token}"},
    ) as r:
        assert r.status == 413 and "share.max_file_bytes" in (await r.json())["params"]["errmsg"]
    assert rh.rows("SELECT count(*) FROM events") == [(0,)]
    assert list((rh.hub.data_dir / "uploads").iterdir()) == []


async def test_html_form_and_escaped_report(start_hub, http) -> None:
    rh = await start_hub()
    async with http.get(rh.url + "/import") as r:
        page = await r.text()
    assert r.status == 200 and r.content_type == "text/html"
    assert '<meta name="viewport"' in page and 'type="file"' in page and "accept=" not in page
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # no scripts, no external assets
    # A browser-like upload whose file name is markup (sent raw: no client-side quoting).
    name = "../../<img src=x onerror=alert(1)>.zip"
    boundary = "----hubtest"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="token"\r\n\r\n{rh.hub.admin_token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/zip\r\n\r\n"
        ).encode()
        + SAMPLE_ARCHIVE.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": "text/html"}
    async with http.post(rh.url + "/import", data=body, headers=headers) as r:
        page = await r.text()
    assert r.status == 200 and r.content_type == "text/html"
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;.zip" in page
    assert "../" not in page and f"imported: {SAMPLE_TOTAL} new events" in page
    assert rh.rows("SELECT name FROM imports") == [("<img src=x onerror=alert(1)>.zip",)]  # no folders
    # Same path, JSON asked for: JSON.
    async with http.post(rh.url + "/import", data=body, headers={**headers, "Accept": "application/json"}) as r:
        assert r.status == 200 and (await r.json())[0]["already_imported"] is True
