"""Auth: without the right device key nothing is stored; without the admin token no admin action runs;
keys and tokens never show up in logs, pages, metrics or error bodies; comparisons are constant-time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from support.events import make_events, mobile_request
from support.hubproc import HubProcess
from support.hubs import write_config
from support.sharefiles import build_archive, event_bytes

from reliability import tally
from reliability.helpers import PATH, duplicate_rows

DEVICE_KEYS = ["devkey-Q7xw2LmN9pRt4Vb8", "devkey-Z3kd8HsY1uWq6Ej0"]
ADMIN_TOKEN = "admintoken-Fh5Jq2Xc9Lm3Np7R"
UPSTREAM_KEY = "upkey-Tg4Wz8Kd2Bn6Vc1S"
SECRETS = [*DEVICE_KEYS, ADMIN_TOKEN, UPSTREAM_KEY]


class Seen:
    """Everything the hub said back, to search for leaked secrets."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []  # (what was asked, what the hub answered: headers and body)

    async def request(self, http: aiohttp.ClientSession, method: str, url: str, **kw) -> tuple[int, bytes]:
        async with http.request(method, url, allow_redirects=False, **kw) as r:
            body = await r.read()
            self.texts.append(
                (
                    f"{method} {url} -> {r.status}",
                    "\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n" + body.decode("utf-8", "replace"),
                )
            )
            return r.status, body


def _count(db: Path, sql: str) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


@pytest.fixture
async def secured(tmp_path, upstream):
    """A subprocess hub with device keys, an admin token and an upstream key (the test's upstream_options set it)."""
    (tmp_path / "device-keys").write_text("# device keys\n" + "\n".join(DEVICE_KEYS) + "\n")
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN + "\n")
    (tmp_path / "upstream-key").write_text(UPSTREAM_KEY + "\n")
    fake = upstream
    assert fake.key == UPSTREAM_KEY, "mark the test @pytest.mark.upstream_options(key=UPSTREAM_KEY)"
    cfg = write_config(
        tmp_path / "hub.toml",
        auth={
            "device_keys_file": str(tmp_path / "device-keys"),
            "admin_token_file": str(tmp_path / "admin-token"),
            "status_page_requires_token": "yes",
        },
        upstream={
            "url": fake.url,
            "api_key_file": str(tmp_path / "upstream-key"),
            "backoff_initial": 0.05,
            "probe_interval": 0.2,
        },
        store={"min_free_bytes": "1 MiB"},
        server={"log_level": "debug"},
    )  # the most talkative log must not leak either
    hub = HubProcess(tmp_path / "data", config=cfg)
    await asyncio.to_thread(hub.start)
    try:
        yield hub, fake
    finally:
        hub.kill()


@pytest.mark.upstream_options(key=UPSTREAM_KEY)
async def test_auth_gates_and_secrets_never_leak(secured, tmp_path):
    hub, fake = secured
    db = hub.data_dir / "hub.db"
    seen = Seen()
    url = hub.url
    async with aiohttp.ClientSession() as http:
        # -- devices ------------------------------------------------------------------------------------------
        wrong = [
            None,
            "Bearer",
            "Bearer ",
            "Bearer wrong",
            f"Basic {DEVICE_KEYS[0]}",
            f"Bearer {DEVICE_KEYS[0]}x",
            f"Bearer {DEVICE_KEYS[0][:-1]}",
            f"Bearer x{DEVICE_KEYS[0]}",
            f"Bearer {ADMIN_TOKEN}",
            f"Bearer {UPSTREAM_KEY}",
            f"Bearer {DEVICE_KEYS[0]},{DEVICE_KEYS[1]}",
            f"{DEVICE_KEYS[0]}",
            "Bearer " + "A" * 10000,
            f"Bearer {DEVICE_KEYS[0].upper()}",
        ]
        before = _count(db, "SELECT count(*) FROM events") + _count(db, "SELECT count(*) FROM quarantine")
        for auth in wrong:
            body, headers = mobile_request(make_events(3))
            headers.pop("Authorization")
            if auth is not None:
                headers["Authorization"] = auth
            headers["X-Api-Key"] = "irrelevant"
            status, answer = await seen.request(http, "POST", url + PATH, data=body, headers=headers)
            assert status == (400 if auth and len(auth) > 8190 else 401), (auth, status, answer[:200])  # 400: too long
            tally.add(fuzz_cases=1)
        after = _count(db, "SELECT count(*) FROM events") + _count(db, "SELECT count(*) FROM quarantine")
        assert after == before, "a request without the right device key stored something"
        accepted = []
        for auth in (f"Bearer {DEVICE_KEYS[0]}", f"bearer {DEVICE_KEYS[1]}", f"Bearer   {DEVICE_KEYS[1]}  "):
            events = make_events(2)
            body, headers = mobile_request(events)
            headers["Authorization"] = auth
            status, answer = await seen.request(http, "POST", url + PATH, data=body, headers=headers)
            assert status == 200, (auth, answer[:200])
            accepted += [e["mid"] for e in events]
        # -- admin actions --------------------------------------------------------------------------------------
        con = sqlite3.connect(db, timeout=30)
        with con:
            con.execute(
                "INSERT INTO dead_letter (mid, eid, ets, received_at, source, raw, reason, failed_at)"
                " VALUES ('dead-1', 'LOG', 1, 0, 'test', ?, 'refused', 0)",
                (b'{"mid":"dead-1","eid":"LOG","ets":1}',),
            )
        con.close()
        archive = tmp_path / "share.zip"
        build_archive(archive, [event_bytes(3, prefix="imp-")])
        bad_tokens = [
            None,
            "",
            "wrong",
            ADMIN_TOKEN[:-1],
            ADMIN_TOKEN + "x",
            DEVICE_KEYS[0],
            UPSTREAM_KEY,
            ADMIN_TOKEN.upper(),
        ]

        def upload(token_field: str | None) -> aiohttp.FormData:
            form = aiohttp.FormData()
            if token_field is not None:
                form.add_field("token", token_field)
            form.add_field("file", archive.read_bytes(), filename="share.zip", content_type="application/zip")
            return form

        actions = [
            ("POST", "/admin/sync?timeout=2", lambda t: None),
            ("GET", "/admin/dead-letters", lambda t: None),
            ("POST", "/admin/dead-letters/requeue", lambda t: b'{"all": true}'),
            ("POST", "/admin/import", upload),
            ("POST", "/import", upload),
            ("GET", "/admin/imports", lambda t: None),
            ("GET", "/admin/export?all=1", lambda t: None),  # all: the forwarder may have sent the pending ones
            ("GET", "/status.json", lambda t: None),
            ("GET", "/metrics", lambda t: None),
            ("GET", "/", lambda t: None),
        ]

        def state() -> tuple[int, int, int]:
            return (
                _count(db, "SELECT count(*) FROM dead_letter"),
                _count(db, "SELECT count(*) FROM imports"),
                _count(db, "SELECT count(*) FROM events WHERE mid LIKE 'imp-%'"),
            )

        before = state()
        for method, path, make_body in actions:
            for token in bad_tokens:
                for how in ("bearer", "header", "query", "form"):
                    if token is None and how != "bearer":
                        continue
                    headers, query, data = {}, "", make_body(token if how == "form" else None)
                    if how == "form" and not isinstance(data, aiohttp.FormData):
                        continue
                    if token is not None and how == "bearer":
                        headers["Authorization"] = f"Bearer {token}"
                    elif how == "header":
                        headers["X-Admin-Token"] = token
                    elif how == "query":
                        query = ("&" if "?" in path else "?") + "token=" + token
                    status, answer = await seen.request(http, method, url + path + query, data=data, headers=headers)
                    assert status == 401, (method, path, how, token, status, answer[:200])
                    tally.add(fuzz_cases=1)
        assert state() == before, "an admin action ran without the admin token"
        # The right token in the query string is refused too: URLs end up in history and logs.
        for method, path, make_body in actions:
            query = ("&" if "?" in path else "?") + "token=" + ADMIN_TOKEN
            status, answer = await seen.request(http, method, url + path + query, data=make_body(None))
            assert status == 401, (method, path, "query with the right token", status, answer[:200])
        assert state() == before, "an admin action ran with the token in its URL"
        # Login form with wrong tokens gives no cookie.
        for token in bad_tokens[1:]:
            status, _ = await seen.request(http, "POST", url + "/login", data={"token": token})
            assert status == 401
        assert not any(c.key for c in http.cookie_jar), "a wrong token bought a login cookie"
        # With the token every action works, so the refusals above meant something.
        good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for method, path, make_body in actions:
            data = make_body(None)
            status, answer = await seen.request(http, method, url + path, data=data, headers=good)
            assert status in (200, 204), (path, status, answer[:300])
        assert state()[0] == 0 and state()[1] == 1 and state()[2] == 3, state()
        status, _ = await seen.request(http, "POST", url + "/login", data={"token": ADMIN_TOKEN})
        assert status == 303
        for path in ("/", "/status.json", "/metrics", "/health", "/import"):
            await seen.request(http, "GET", url + path)  # with the login cookie now
        # Let the forwarder send with the upstream key, so the key is in use while we look for it.
        deadline = time.monotonic() + 20
        while not set(accepted) <= fake.mids and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert set(accepted) <= fake.mids, "forwarding with the upstream key did not work"
        assert fake.redelivered() == {}, "an event reached upstream twice"
        assert not duplicate_rows(db), "the store holds a mid in more than one row"
        for path in ("/health", "/", "/status.json", "/metrics"):
            await seen.request(http, "GET", url + path, headers=good)
    assert hub.terminate() == 0
    log = hub.log_path.read_text()
    assert "admin action /admin/sync refused" in log  # the refusals were logged (without the token)
    tally.add(fault_scenarios=1)
    for secret in SECRETS:
        assert secret not in log, f"{secret[:8]}... appears in the hub's log"
        leaked = [asked for asked, answer in seen.texts if secret in answer]
        assert not leaked, f"{secret[:8]}... appears in answers: {leaked[:5]}"
        assert secret.lower() not in log.lower()
    # The data dir holds the token only in the admin-token file we gave; no copy elsewhere in plain text.
    for path in hub.data_dir.rglob("*"):
        if path.is_file() and path.suffix not in (".db", ".db-wal", ".db-shm"):
            text = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in text, f"{secret[:8]}... stored in {path}"


class _CompareSpy:
    """Stands in for hmac.compare_digest: records each comparison, answers as the real one or as told."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[tuple[bytes, bytes]] = []
        self.answer: bool | None = None  # None: the real answer

    def __call__(self, a, b) -> bool:
        self.calls.append(
            (a.encode() if isinstance(a, str) else bytes(a), b.encode() if isinstance(b, str) else bytes(b))
        )
        return self.real(a, b) if self.answer is None else self.answer

    def compared_with(self, presented: str) -> list[bytes]:
        """What the presented secret was compared against."""
        p = presented.encode()
        return [b if a == p else a for a, b in self.calls if p in (a, b)]


async def test_secret_comparisons_are_constant_time(start_hub, http, tmp_path, monkeypatch):
    """Every device key, admin token and login cookie a request presents is checked by hmac.compare_digest
    (against every device key: no early exit once one matched), and that comparison alone decides: made to
    say "no", the right secret is refused; made to say "yes", a wrong one of the same length is let in. So no
    == / != / `in` on a secret can be deciding instead (what a source grep used to stand for)."""
    (tmp_path / "device-keys").write_text("\n".join(DEVICE_KEYS) + "\n")
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN + "\n")
    rh = await start_hub(
        auth={
            "device_keys_file": str(tmp_path / "device-keys"),
            "admin_token_file": str(tmp_path / "admin-token"),
            "status_page_requires_token": "yes",
        }
    )
    spy = _CompareSpy(hmac.compare_digest)
    monkeypatch.setattr(hmac, "compare_digest", spy)

    def same_length_wrong(secret: str) -> str:
        return secret[:-4] + ("WXYZ" if not secret.endswith("WXYZ") else "ABCD")

    async def device(key: str) -> int:
        body, headers = mobile_request(make_events(1))
        headers["Authorization"] = f"Bearer {key}"
        async with http.post(rh.url + PATH, data=body, headers=headers) as r:
            return r.status

    async def admin(token: str) -> int:
        async with http.get(rh.url + "/admin/dead-letters", headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status

    async def status_page(cookie: str) -> int:
        async with http.get(rh.url + "/", headers={"Cookie": f"hub_status={cookie}"}, allow_redirects=False) as r:
            return r.status

    async with http.post(rh.url + "/login", data={"token": ADMIN_TOKEN}, allow_redirects=False) as r:
        assert r.status == 303
        cookie = r.cookies["hub_status"].value

    def digest(secret: str) -> str:  # the hub keeps only a session id's SHA-256, and compares that
        return hashlib.sha256(secret.encode()).hexdigest()

    def as_is(secret: str) -> str:
        return secret

    checks = [
        (device, DEVICE_KEYS[0], {k.encode() for k in DEVICE_KEYS}, as_is),
        (device, DEVICE_KEYS[1], {k.encode() for k in DEVICE_KEYS}, as_is),
        (admin, ADMIN_TOKEN, {ADMIN_TOKEN.encode()}, as_is),
        (status_page, cookie, {digest(cookie).encode()}, digest),
    ]
    for call, secret, against, seen_as in checks:
        wrong = same_length_wrong(secret)
        spy.calls.clear()
        assert await call(secret) == 200, call.__name__
        assert set(spy.compared_with(seen_as(secret))) == against, (call.__name__, spy.calls)
        if call is device:  # each configured key once, also after the first one matched
            assert sorted(spy.compared_with(secret)) == sorted(against), spy.calls
        spy.calls.clear()
        assert await call(wrong) == 401, call.__name__
        assert set(spy.compared_with(seen_as(wrong))) == against, (call.__name__, spy.calls)
        spy.answer = False
        assert await call(secret) == 401, f"{call.__name__}: the right secret got in without compare_digest saying so"
        spy.answer = True
        assert await call(wrong) == 200, f"{call.__name__}: something besides compare_digest refused a wrong secret"
        spy.answer = None
