"""Signing in on a hostile LAN, against the hub as a subprocess on real sockets: server-side sessions (a new
one per login, ended by logout, by expiry and by a new admin token), HTTPS-only people's paths with TLS on
(308 / 403 on the plain port, HSTS and a Secure cookie on HTTPS), the short sign-in code, and Sync now and
import by session with a CSRF token and an Origin check."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import time
import urllib.parse
from pathlib import Path

import pytest
from support.hubproc import HubProcess, free_port
from support.hubs import write_config

pytestmark = pytest.mark.slow  # starts hub subprocesses

TOKEN = "c0ffee" * 8


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def cookie(self) -> str:
        """The session cookie's value this answer sets ("" if none)."""
        m = re.search(r"hub_status=([^;]*)", self.headers.get("Set-Cookie", ""))
        return m.group(1).strip('"') if m else ""


def ask(
    port: int,
    method: str,
    path: str,
    *,
    tls_pin: str = "",
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    cookie: str = "",
) -> Answer:
    """One request on a fresh connection; with `tls_pin`, over HTTPS to a certificate of that SHA-256."""
    if tls_pin:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # pinned below instead
        con: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    else:
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hdrs = dict(headers or {})
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    if cookie:
        hdrs["Cookie"] = f"hub_status={cookie}"
    con.request(method, path, body=body, headers=hdrs)
    if tls_pin:
        der = con.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert hashlib.sha256(der).hexdigest() == tls_pin, "not the hub's certificate"
    r = con.getresponse()
    answer = Answer(r.status, r.headers, r.read())
    con.close()
    return answer


def _hub(tmp_path: Path, *, tls: bool = False, session_days: float = 30.0, name: str = "data") -> HubProcess:
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    sections: dict[str, dict[str, object]] = {
        "auth": {
            "admin_token_file": str(tmp_path / "admin-token"),
            "status_page_requires_token": "yes",
            "session_days": session_days,
        }
    }
    if tls:
        sections["tls"] = {"enabled": True, "port": free_port()}
    cfg = write_config(tmp_path / f"{name}.toml", **sections)
    return HubProcess(tmp_path / name, config=cfg)


def _fingerprint(hub: HubProcess) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((hub.data_dir / "tls" / "cert.pem").read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _another_certificate() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _login(port: int, secret: str = TOKEN, **kw: str) -> Answer:
    return ask(port, "POST", "/login", form={"token": secret}, **kw)


def test_every_login_is_its_own_session_ended_by_logout_and_kept_across_restarts(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    with hub:
        first, second = _login(hub.port), _login(hub.port)
        assert first.status == second.status == 303
        a, b = first.cookie(), second.cookie()
        assert a and b and a != b, "two logins gave the same cookie"
        assert TOKEN not in a + b
        for c in (a, b):
            assert ask(hub.port, "GET", "/", cookie=c).status == 200
        assert ask(hub.port, "GET", "/", cookie=a[:-2] + "xx").status == 401
        # Logout ends that session on the hub: the cookie, replayed, no longer works; the other one does.
        out = ask(hub.port, "POST", "/logout", cookie=a)
        assert out.status == 303 and 'hub_status=""' in out.headers["Set-Cookie"]
        assert ask(hub.port, "GET", "/", cookie=a).status == 401
        assert ask(hub.port, "GET", "/status.json", cookie=a).status == 401
        assert ask(hub.port, "GET", "/", cookie=b).status == 200
        stored = (hub.data_dir / "sessions.json").read_text()
        assert b not in stored and a not in stored and TOKEN not in stored  # only digests are kept
        assert (hub.data_dir / "sessions.json").stat().st_mode & 0o077 == 0
    # A restart keeps the sessions (a phone does not sign in again after a power cut)...
    with hub:
        assert ask(hub.port, "GET", "/", cookie=b).status == 200
        assert ask(hub.port, "GET", "/", cookie=a).status == 401
    # ...but a new admin token ends every one of them.
    (tmp_path / "admin-token").write_text("beef" * 12 + "\n")
    with hub:
        assert ask(hub.port, "GET", "/", cookie=b).status == 401
        assert _login(hub.port, "beef" * 12).status == 303
    assert "every browser signs in again" in hub.log()


def test_a_session_expires_after_auth_session_days(tmp_path: Path) -> None:
    hub = _hub(tmp_path, session_days=3 / 86400)  # three seconds
    with hub:
        login = _login(hub.port)
        assert re.search(r"Max-Age=3\b", login.headers["Set-Cookie"]), login.headers["Set-Cookie"]
        cookie = login.cookie()
        assert ask(hub.port, "GET", "/", cookie=cookie).status == 200
        time.sleep(3.5)
        assert ask(hub.port, "GET", "/", cookie=cookie).status == 401


def test_with_tls_people_s_paths_are_https_only_and_devices_keep_plain_http(tmp_path: Path) -> None:
    hub = _hub(tmp_path, tls=True)
    with hub:
        tls_port = int(re.search(r"HTTPS on port (\d+)", hub.log()).group(1))  # type: ignore[union-attr]
        pin = _fingerprint(hub)
        # Plain HTTP: a GET is sent to the same path on HTTPS; anything else is refused before it is read.
        for path in ("/", "/status.json?x=1", "/metrics", "/import", "/admin/dead-letters", "/admin/export"):
            r = ask(hub.port, "GET", path)
            assert r.status == 308, (path, r.status)
            assert r.headers["Location"] == f"https://127.0.0.1:{tls_port}{path}", r.headers["Location"]
        for path in ("/login", "/admin/sync", "/import", "/admin/login-code", "/logout"):
            r = ask(hub.port, "POST", path, form={"token": TOKEN})
            assert r.status == 403, (path, r.status)
            assert "HTTPS only" in r.text and f"https://127.0.0.1:{tls_port}{path}" in r.text, r.text
        assert "Set-Cookie" not in _login(hub.port).headers
        # The device API and /health stay on plain HTTP.
        assert ask(hub.port, "GET", "/health").status == 200
        assert ask(hub.port, "GET", "/api/data/v1/telemetry").status != 308
        # HTTPS: HSTS on every answer; the login cookie is Secure, HttpOnly and SameSite=Strict.
        login = _login(tls_port, tls_pin=pin)
        assert login.status == 303
        assert login.headers["Strict-Transport-Security"] == "max-age=31536000"
        set_cookie = login.headers["Set-Cookie"]
        for flag in ("Secure", "HttpOnly", "SameSite=Strict"):
            assert flag in set_cookie, set_cookie
        page = ask(tls_port, "GET", "/", tls_pin=pin, cookie=login.cookie())
        assert page.status == 200 and page.headers["Strict-Transport-Security"] == "max-age=31536000"
        # The cookie over plain HTTP buys nothing: it is sent on to HTTPS first.
        assert ask(hub.port, "GET", "/", cookie=login.cookie()).status == 308
        # A forged Host is refused on the HTTPS listener too (DNS rebinding).
        forged = ask(tls_port, "GET", "/status.json", tls_pin=pin, headers={"Host": "attacker.example"})
        assert forged.status == 421


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, "no CSRF token in the page"
    return m.group(1)


def test_sign_in_code_and_sync_now_by_session_with_csrf_and_origin(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    with hub:
        code = re.search(r"sign-in code for a phone: ([a-z2-9]{5}-[a-z2-9]{5})", hub.log())
        assert code, hub.log()
        # The login page names this hub's token file, and explains the code.
        page = ask(hub.port, "GET", "/").text
        assert str(tmp_path / "admin-token") in page and "/var/lib/telemetry-hub" not in page
        assert "telemetry-hub login-code" in page
        # The code works once, typed as a phone would (upper case, no dash).
        typed = code.group(1).replace("-", "").upper()
        login = _login(hub.port, typed)
        assert login.status == 303 and login.cookie()
        assert _login(hub.port, typed).status == 401, "a sign-in code worked twice"
        # A code minted over the admin API works too; without the token no code is made.
        assert ask(hub.port, "POST", "/admin/login-code").status == 401
        minted = ask(hub.port, "POST", "/admin/login-code", headers={"Authorization": f"Bearer {TOKEN}"})
        assert minted.status == 200
        assert _login(hub.port, minted.text.split('"code":"')[1].split('"')[0]).status == 303

        # Signed in, Sync now needs no token: the page's form carries the session's CSRF token.
        cookie = login.cookie()
        status_page = ask(hub.port, "GET", "/", cookie=cookie).text
        csrf = _csrf(status_page)
        assert 'name="token"' not in status_page.split('id="actions"')[1].split("</form>")[0]
        html = {"Accept": "text/html"}
        own = {**html, "Origin": f"http://127.0.0.1:{hub.port}"}
        ok = ask(hub.port, "POST", "/admin/sync?timeout=1", form={"csrf": csrf}, cookie=cookie, headers=own)
        assert ok.status == 303 and ok.headers["Location"] in ("/?synced=1", "/?synced=0"), ok.headers
        assert "admin action /admin/sync refused" not in hub.log()
        # The cookie alone, a wrong CSRF token, another site's Origin, or another session's token: refused.
        refusals = [
            ({}, html),
            ({"csrf": "x" * len(csrf)}, own),
            ({"csrf": csrf}, {**html, "Origin": "http://attacker.example"}),
            ({"csrf": csrf}, {**html, "Origin": "null"}),
        ]
        for form, headers in refusals:
            r = ask(hub.port, "POST", "/admin/sync?timeout=1", form=form, cookie=cookie, headers=headers)
            denied = r.status == 401 or (r.status == 303 and r.headers["Location"] == "/?synced=denied")
            assert denied, (form, headers, r.status)
        other = _login(hub.port).cookie()
        r = ask(hub.port, "POST", "/admin/sync?timeout=1", form={"csrf": csrf}, cookie=other, headers=own)
        assert r.headers["Location"] == "/?synced=denied"
        # The import form, signed in, asks for no token either.
        form_page = ask(hub.port, "GET", "/import", cookie=cookie).text
        assert _csrf(form_page) == csrf and 'name="token"' not in form_page
        # After logout the CSRF token is worth nothing.
        ask(hub.port, "POST", "/logout", cookie=cookie)
        r = ask(hub.port, "POST", "/admin/sync?timeout=1", form={"csrf": csrf}, cookie=cookie, headers=own)
        assert r.headers["Location"] == "/?synced=denied"
    assert code.group(1) in hub.log()


def test_the_login_code_command_over_ssh_reaches_a_tls_hub_and_pins_its_certificate(tmp_path: Path) -> None:
    """`telemetry-hub login-code` on the Pi: with TLS on it talks HTTPS to the local hub, pinned to the
    certificate in the hub's own files; the code it prints signs a browser in."""
    import subprocess
    import sys

    hub = _hub(tmp_path, tls=True)
    with hub:
        tls_port = int(re.search(r"HTTPS on port (\d+)", hub.log()).group(1))  # type: ignore[union-attr]
        cli = [sys.executable, "-m", "hub", "--config", str(hub.config), "login-code"]
        env = {**os.environ, "TELEMETRY_HUB_DATA_DIR": str(hub.data_dir)}
        done = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        code = re.search(r"sign-in code: ([a-z2-9]{5}-[a-z2-9]{5})", done.stdout)
        assert code and f"https://127.0.0.1:{tls_port}/" in done.stdout, done.stdout
        assert _login(tls_port, code.group(1), tls_pin=_fingerprint(hub)).status == 303
        # Another certificate in the hub's files (someone else answering): the CLI refuses to talk to it.
        (hub.data_dir / "tls" / "cert.pem").write_bytes(_another_certificate())
        done = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 1 and "not this hub's" in done.stderr, done.stderr
