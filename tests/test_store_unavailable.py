"""A store that cannot commit (dead disk, read-only file system, damaged file): an honest 503, one log line per cause.

The failures here are SQLite's own: `PRAGMA query_only` makes the writer's connection refuse every
write with SQLITE_READONLY (as a file system remounted read-only does), and the disk I/O and
"malformed" errors a dying SD card gives are raised from inside the writer's commit. The real
file system shut down under a running hub is tests/reliability/test_store_failure.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3

import aiohttp
import pytest
from support.events import js_request, make_events
from support.sharefiles import build_archive, event_bytes

import hub.store.core as store_core
from hub.errors import StoreUnavailable
from hub.schema import SchemaChecker
from hub.store import Store
from hub.store.failures import describe, is_storage_failure
from hub.telemetry import check_events, split_envelope

PATH = "/api/data/v1/telemetry"


def checked(n: int = 3):
    body, _ = js_request(make_events(n))
    _, items = split_envelope(body, 1000)
    return check_events(items, max_event_bytes=1 << 20, schema=SchemaChecker(), strict=False)


async def read_only(store: Store, on: bool) -> None:
    """The writer's connection refuses (or takes again) every write, with SQLite's own SQLITE_READONLY."""
    assert store._db is not None
    await store._db.execute(f"PRAGMA query_only={1 if on else 0}")


def failing_commit(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Every group commit fails inside the writer's thread with `exc`, as a dying disk makes it."""

    def apply_group(conn, *args, **kwargs):
        raise exc

    monkeypatch.setattr(store_core, "apply_group", apply_group)


def store_log(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("hub.store") and r.levelno >= level]


@pytest.mark.parametrize(
    "exc,cause",
    [
        (sqlite3.OperationalError("disk I/O error"), "disk"),
        (sqlite3.DatabaseError("database disk image is malformed"), "disk"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "read-only"),
        (OSError(5, "Input/output error"), "disk"),
        (OSError(30, "Read-only file system"), "read-only"),
        (sqlite3.OperationalError("database is locked"), "locked"),
    ],
)
def test_storage_failures_are_named_by_cause(exc, cause, tmp_path):
    assert is_storage_failure(exc)
    found, sentence = describe(exc, tmp_path / "hub.db")
    assert found == cause
    assert str(tmp_path) in sentence and str(exc) in sentence


def test_a_data_error_is_not_a_storage_failure(tmp_path):
    assert not is_storage_failure(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_storage_failure(ValueError("odd"))
    assert describe(ValueError("odd"), tmp_path / "hub.db")[0].startswith("bug:")


async def test_read_only_database_is_store_unavailable_logged_once_then_resumes(store, caplog):
    caplog.set_level(logging.DEBUG, logger="hub.store")
    await store.add(checked(), source="t")
    await read_only(store, True)
    for _ in range(5):
        with pytest.raises(StoreUnavailable) as info:
            await store.add(checked(), source="t")
        assert "cannot be written" in str(info.value) and "read-only" in str(info.value)
    assert store.stats.unavailable == str(info.value)
    errors = store_log(caplog, logging.WARNING)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "readonly" in errors[0].getMessage() and "503" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records), "a storage failure is not a bug: no traceback"
    assert len([r for r in store_log(caplog, logging.DEBUG) if r.levelno == logging.DEBUG]) >= 4
    assert await store.read.backlog() == 3  # nothing of the refused requests was stored

    await read_only(store, False)
    caplog.clear()
    result = await store.add(checked(), source="t")  # no restart: the next commit simply works
    assert result.new == 3 and store.stats.unavailable is None
    assert [r.getMessage() for r in store_log(caplog)] == ["store write works again"]


async def test_malformed_in_a_group_commit_refuses_the_group_without_one_by_one(store, monkeypatch, caplog):
    """A failing disk fails every request alike: no retry one by one, one line, every request refused."""
    caplog.set_level(logging.DEBUG, logger="hub.store")
    failing_commit(monkeypatch, sqlite3.DatabaseError("database disk image is malformed"))
    results = await asyncio.gather(*(store.add(checked(), source="t") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    lines = [r.getMessage() for r in store_log(caplog, logging.WARNING)]
    assert len(lines) == 1 and "malformed" in lines[0], lines
    assert store.space.pending_bytes == 0


async def test_device_gets_sunbird_503_with_retry_after_and_resumes(start_hub, http, monkeypatch, caplog):
    hub = await start_hub(store={"retry_after": 17})
    caplog.set_level(logging.DEBUG, logger="hub")
    body, headers = js_request(make_events(4))
    async with http.post(hub.url + PATH, data=body, headers=headers) as r:
        assert r.status == 200
    caplog.clear()
    for exc in (
        sqlite3.OperationalError("disk I/O error"),
        sqlite3.DatabaseError("database disk image is malformed"),
        OSError(5, "Input/output error"),
        sqlite3.OperationalError("attempt to write a readonly database"),
    ):
        failing_commit(monkeypatch, exc)
        for _ in range(3):
            body, headers = js_request(make_events(4))
            async with http.post(hub.url + PATH, data=body, headers=headers) as r:
                text = await r.text()
                assert r.status == 503, (exc, r.status, text)  # not aiohttp's bare 500
                assert r.headers["Retry-After"] == "17"
            answer = json.loads(text)
            params = answer["params"]
            assert params["status"] == "failed" and params["err"] == "ERR_SERVICE_UNAVAILABLE"
            assert answer["responseCode"] == "SERVICE_UNAVAILABLE"
            assert "the hub cannot store telemetry now" in params["errmsg"]
            assert "retry" in params["errmsg"] and str(exc) in params["errmsg"]
    assert hub.rows("SELECT count(*) FROM events") == [(4,)], "a refused request left events stored"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # One line per cause: the failing disk (I/O error, malformed, EIO alike), the read-only database.
    assert len(lines) == 2, lines
    assert not any(r.exc_info for r in caplog.records), "no traceback for a failing store"
    assert not any("Error handling request" in m for m in lines)

    monkeypatch.undo()
    body, headers = js_request(make_events(4))
    async with http.post(hub.url + PATH, data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
    assert hub.rows("SELECT count(*) FROM events") == [(8,)]


async def test_import_into_a_failing_store_is_refused_in_words_without_a_traceback(
    start_hub, http, monkeypatch, caplog, tmp_path
):
    hub = await start_hub()
    build_archive(tmp_path / "a.zip", [event_bytes(5)])
    caplog.set_level(logging.DEBUG, logger="hub")
    failing_commit(monkeypatch, sqlite3.OperationalError("disk I/O error"))
    async with http.post(
        hub.url + "/admin/import",
        data=_form("a.zip", (tmp_path / "a.zip").read_bytes()),
        headers={"Authorization": f"Bearer {hub.hub.admin_token}"},
    ) as r:
        assert r.status == 200, await r.text()
        (report,) = await r.json()
    assert "the hub cannot store telemetry now" in report["error"] and "disk I/O error" in report["error"]
    assert not any(r.exc_info for r in caplog.records), "a failing store is not a bug: no traceback"
    assert hub.rows("SELECT count(*) FROM imports") == [(0,)]
    monkeypatch.undo()  # the same file goes in once the store works again
    async with http.post(
        hub.url + "/admin/import",
        data=_form("a.zip", (tmp_path / "a.zip").read_bytes()),
        headers={"Authorization": f"Bearer {hub.hub.admin_token}"},
    ) as r:
        (report,) = await r.json()
    assert report["new"] == 5 and not report.get("error"), report


def _form(name: str, content: bytes) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", content, filename=name, content_type="application/octet-stream")
    return data
