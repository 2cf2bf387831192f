"""What branch IT sees: /health for machines, the status page at /, /status.json for the CLI, /metrics.

Every fact the page shows comes from `Status.facts()`, which is also what `/status.json` serves
and `telemetry-hub status` prints, so the three never disagree.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import ipaddress
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import segno
from aiohttp import web
from yarl import URL

from .admin import AdminGate, token_from
from .config import SUNBIRD_PATH, Config
from .forward import Forwarder, Outcome
from .ingest import Ingest, json_response, sunbird_error
from .metrics import Metrics
from .store import Store

__all__ = ["Problem", "Status", "format_text", "page_needs_token"]

log = logging.getLogger(__name__)

# Health reports "full" once a typical request would no longer fit.
_HEALTH_MARGIN_BYTES = 32 * 1024
_RECENT_DEVICES = 20
_TOP_REASONS = 5
_REFRESH_S = 30  # page auto-refresh (s)
_SYNC_TIMEOUT_S = 30  # how long the Sync now button waits for the outcome (s)
_COOKIE = "hub_status"
_COOKIE_MAX_AGE_S = 180 * 86400  # a phone stays logged in for a school term or two
_COOKIE_LABEL = b"telemetry-hub status page v1"
_LOOPBACK_NAMES = ("localhost",)
_REASON_SQL = ("CASE WHEN reason GLOB 'event [0-9]* *' "
               "THEN 'event ' || substr(reason, 7 + instr(substr(reason, 7), ' ')) ELSE reason END")

_LINK_TEXT = {
    "up": "working",
    "down": "unreachable",
    "auth-failed": "API key rejected",
    "unknown": "not tried yet",
    "disabled": "not configured",
}
_STATE_TEXT = {
    "ok": "Working normally",
    "attention": "Needs attention",
    "failing": "Not working: new telemetry is refused",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong, in words branch IT can act on."""

    severity: str  # critical (telemetry is refused) | warning (needs someone) | note (for information)
    code: str
    message: str


def page_needs_token(cfg: Config) -> bool:
    """Whether the status page, status JSON and metrics ask for the admin token (auto: unless on loopback)."""
    mode = cfg.auth.status_page_requires_token
    if mode in ("yes", "no"):
        return mode == "yes"
    return not _is_loopback(cfg.server.host)


def _is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only ("" = every address: no)."""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every address) or a host name: reachable from the LAN


class Status:
    """Answers 'is the hub healthy, and why not' from the store's live figures."""

    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        forwarder: Forwarder,
        admin: AdminGate,
        cfg: Config,
        *,
        version: str,
        hub_id: str,
        cookie_key: str = "",
    ) -> None:
        """`cookie_key` is what the login cookie is derived from: pass the admin token, so a new token
        logs every browser out and a restart does not. Empty: a random key, so logins last one run."""
        self.store = store
        self.ingest = ingest
        self.forwarder = forwarder
        self.admin = admin
        self.cfg = cfg
        self.version = version
        self.hub_id = hub_id
        self.started_at = time.time()
        self.needs_token = page_needs_token(cfg)
        key = cookie_key.encode() or secrets.token_bytes(32)
        self._cookie = hmac.new(key, _COOKIE_LABEL, hashlib.sha256).hexdigest()
        self._down_since: float | None = None
        self.metrics = Metrics(store, ingest, forwarder, version=version, hub_id=hub_id)
        forwarder.observers.append(self._on_batch)

    def routes(self) -> list[web.RouteDef]:
        """The status paths, for the composition root to mount."""
        return [
            web.get("/health", self.health),
            web.get("/", self.page),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.get("/status.json", self.status_json),
            web.get("/metrics", self.metrics_page),
        ]

    def _on_batch(self, kind: str, outcome: Outcome, n_events: int, seconds: float) -> None:
        """Remember since when upstream has been unreachable (the forwarder keeps only the current state)."""
        if kind == "network":
            if self._down_since is None:
                self._down_since = time.time() - seconds
        else:
            self._down_since = None

    # ---- assessment ------------------------------------------------------------------------------------------

    def assess(self, writable: bool, now: float | None = None) -> list[Problem]:
        """Everything wrong right now, worst first; from in-memory figures only (cheap enough for /health)."""
        now = time.time() if now is None else now
        s = self.store.stats
        st = self.forwarder.state
        cap = self.store.cfg.max_bytes
        health = self.cfg.health
        out: list[Problem] = []
        if not writable:
            out.append(Problem("critical", "store-not-writable",
                               "The hub cannot write to its database, so devices' telemetry is refused. "
                               "Check the SD card and the log (journalctl -u telemetry-hub)."))
        space = self.store.space_problem(_HEALTH_MARGIN_BYTES)
        if space:
            out.append(Problem("critical", "store-full", f"New telemetry is refused: {space}."))
        elif cap and s.db_bytes >= health.store_warn_fraction * cap:
            out.append(Problem("warning", "store-nearly-full",
                               f"The store is at {100 * s.db_bytes // cap}% of its cap ({_bytes(s.db_bytes)} of "
                               f"{_bytes(cap)}, store.max_bytes); at 100% it refuses new telemetry. "
                               "Get the backlog delivered, or raise the cap if the disk has room."))
        elif s.free_bytes and s.free_bytes < 2 * self.store.cfg.min_free_bytes:
            out.append(Problem("warning", "disk-low",
                               f"Only {_bytes(s.free_bytes)} free on the disk; below {_bytes(self.store.cfg.min_free_bytes)} "
                               "(store.min_free_bytes) the hub refuses new telemetry. Free some disk space."))
        if not self.forwarder.url:
            out.append(Problem("note", "no-upstream",
                               "No upstream is configured (upstream.url): telemetry is kept on this hub only."))
        elif st.link == "auth-failed":
            out.append(Problem("warning", "upstream-key-rejected",
                               f"The institute's server rejects this hub's API key (it answered: {_answer(st.last_error)}). "
                               f"Nothing is lost: {s.backlog:,} events wait here. Put the right key in "
                               "upstream.api_key_file; the hub retries by itself."))
        elif st.link == "down":
            since = self._down_since or st.last_error_at or now
            if s.backlog and now - since >= health.upstream_down_minutes * 60:
                out.append(Problem("warning", "upstream-unreachable",
                                   f"The institute's server has been unreachable for {_duration(now - since)} and "
                                   f"{s.backlog:,} events are waiting. Check the internet link; the events are "
                                   "kept and sent when it works again."))
        if s.dead_letters >= health.dead_letters:
            out.append(Problem("warning", "dead-letters",
                               f"{s.dead_letters:,} events were refused by the institute's server (dead letters). "
                               "List them with `telemetry-hub dead-letter list`; re-queue them once the cause is fixed."))
        elif s.dead_letters:
            out.append(Problem("note", "dead-letters",
                               f"{s.dead_letters:,} event{'s were' if s.dead_letters != 1 else ' was'} refused by the "
                               "institute's server (dead letters): `telemetry-hub dead-letter list`."))
        if self.forwarder.url and st.waiting_for and s.backlog and st.link != "auth-failed":
            out.append(Problem("note", "waiting", f"Upload is waiting for {st.waiting_for}."))
        order = {"critical": 0, "warning": 1, "note": 2}
        return sorted(out, key=lambda p: order[p.severity])

    @staticmethod
    def state_of(problems: Sequence[Problem]) -> str:
        """ok | attention | failing."""
        severities = {p.severity for p in problems}
        return "failing" if "critical" in severities else "attention" if "warning" in severities else "ok"

    # ---- /health ---------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """Machine-readable health: 200 when the store takes writes, 503 with the reason when not."""
        writable = await self.store.writable()
        s = self.store.stats
        st = self.forwarder.state
        found = self.assess(writable)
        problems = [p.message for p in found if p.severity == "critical"]
        body = {
            "healthy": not problems,
            "problems": problems,
            "warnings": [p.message for p in found if p.severity == "warning"],
            "state": self.state_of(found),
            "version": self.version,
            "hub": self.hub_id,
            "store_writable": writable,
            "backlog": s.backlog,
            "stored_total": s.stored_total,
            "quarantined": s.quarantined,
            "duplicates": s.duplicates,
            "delivered": s.delivered,
            "dead_letters": s.dead_letters,
            "db_bytes": s.db_bytes,
            "free_bytes": s.free_bytes,
            "link": st.link,
            "last_success_at": st.last_success_at,
            "last_error": st.last_error,
        }
        return json_response(200 if not problems else 503, body)

    # ---- facts -----------------------------------------------------------------------------------------------

    async def facts(self, request: web.Request | None = None) -> dict[str, Any]:
        """Every fact the status page shows, JSON-ready (times are epoch seconds)."""
        now = time.time()
        writable = await self.store.writable()
        problems = self.assess(writable, now)
        state = self.state_of(problems)
        s = self.store.stats
        st = self.forwarder.state
        store = self.store
        counters = dict(await store.fetchall("SELECT name, value FROM counters"))
        hour_now = int(now // 3600)
        per_hour = {h: {"received": 0, "delivered": 0} for h in range(hour_now - 23, hour_now + 1)}
        for hour, kind, n in await store.fetchall(
            "SELECT hour, kind, n FROM hourly WHERE hour > ? AND hour <= ?", (hour_now - 24, hour_now)
        ):
            if hour in per_hour and kind in ("received", "delivered"):
                per_hour[hour][kind] += int(n)
        hourly = [{"hour_start": h * 3600, **v} for h, v in sorted(per_hour.items())]
        recent = await store.fetchall(
            "SELECT did, first_seen, last_seen, events FROM devices ORDER BY last_seen DESC, did LIMIT ?",
            (_RECENT_DEVICES,),
        )
        device_count = await store.scalar("SELECT count(*) FROM devices")
        last_db_delivery = await store.scalar("SELECT max(delivered_at) FROM events WHERE delivered_at IS NOT NULL")
        last_delivery = max(st.last_success_at or 0.0, last_db_delivery / 1000) or None
        urls, url_note = await self._device_urls(request)
        cap = store.cfg.max_bytes
        return {
            "healthy": state == "ok",
            "state": state,
            "state_text": _STATE_TEXT[state],
            "problems": [asdict(p) for p in problems],
            "now": now,
            "hub": {
                "id": self.hub_id,
                "version": self.version,
                "branch": self.cfg.server.branch_name,
                "started_at": self.started_at,
            },
            "events": {
                "received": int(counters.get("received", 0)),
                "duplicates": s.duplicates,
                "quarantined": s.quarantined,
                "backlog": s.backlog,
                "delivered": s.delivered,
                "dead_letters": s.dead_letters,
            },
            "upstream": {
                "configured": bool(self.forwarder.url),
                "url": _without_credentials(self.forwarder.url),
                "link": st.link,
                "link_text": _LINK_TEXT.get(st.link, st.link),
                "last_delivery_at": last_delivery,
                "last_error": st.last_error,
                "last_error_at": st.last_error_at,
                "last_error_kind": st.last_error_kind,
                "unreachable_since": self._down_since if st.link == "down" else None,
                "next_attempt_at": st.next_attempt_at,
                "waiting_for": st.waiting_for,
                "errors": dict(sorted(st.errors.items())),
                "batch_limit": st.batch_limit,
            },
            "store": {
                "writable": writable,
                "accepting": store.space_problem() is None and writable,
                "refusal": store.space_problem(),
                "db_bytes": s.db_bytes,
                "max_bytes": cap,
                "used_fraction": round(s.db_bytes / cap, 4) if cap else None,
                "warn_fraction": self.cfg.health.store_warn_fraction,
                "free_bytes": s.free_bytes,
                "min_free_bytes": store.cfg.min_free_bytes,
                "last_commit_at": s.last_commit_at or None,
            },
            "hourly": hourly,
            "last_24h": {
                "received": sum(h["received"] for h in hourly),
                "delivered": sum(h["delivered"] for h in hourly),
            },
            "devices": {
                "count": device_count,
                "recent": [
                    {"did": str(did), "first_seen": first / 1000, "last_seen": last / 1000, "events": int(n)}
                    for did, first, last, n in recent
                ],
            },
            "quarantine": {"count": s.quarantined, "top_reasons": await self._top_reasons("quarantine")},
            "dead_letters": {"count": s.dead_letters, "top_reasons": await self._top_reasons("dead_letter")},
            "requests": {
                "total": self.ingest.counters.requests,
                "by_status": {str(k): v for k, v in sorted(self.ingest.counters.by_status.items())},
                "refused": dict(sorted(self.ingest.counters.client_errors.items())),
            },
            "device_urls": urls,
            "device_urls_note": url_note,
        }

    async def _top_reasons(self, table: str) -> list[dict[str, Any]]:
        assert table in ("quarantine", "dead_letter")  # never user input: table names cannot be bound
        # "event 12 has no 'mid' string" and "event 3 has no 'mid' string" are one reason: drop the index.
        reason = _REASON_SQL if table == "quarantine" else "reason"
        rows = await self.store.fetchall(
            f"SELECT {reason} AS r, count(*) AS n FROM {table} GROUP BY r ORDER BY n DESC, r LIMIT ?",
            (_TOP_REASONS,),
        )
        return [{"reason": str(reason), "count": int(n)} for reason, n in rows]

    async def _device_urls(self, request: web.Request | None) -> tuple[list[str], str | None]:
        """The telemetry URL devices should use, one per address devices can reach, and a caveat."""
        host = self.cfg.server.host.strip()
        ports = {"http": self.cfg.server.port, "https": self.cfg.tls.port if self.cfg.tls.enabled else 0}
        if request is not None and request.transport is not None:
            sockname = request.transport.get_extra_info("sockname")
            if isinstance(sockname, tuple) and len(sockname) >= 2:  # the real port, even when configured as 0
                ports["https" if request.secure else "http"] = int(sockname[1])
        schemes = [(scheme, port) for scheme, port in ports.items() if port]
        if host and host not in ("0.0.0.0", "::"):
            bare = host.strip("[]")
            shown = f"[{bare}]" if ":" in bare else bare
            urls = [f"{scheme}://{shown}:{port}{SUNBIRD_PATH}" for scheme, port in schemes]
            if _is_loopback(host):
                return urls, (f"The hub listens only on {host}, so devices cannot reach it. "
                              'Set server.host = "" (every address) in the config to let them in.')
            return urls, None
        urls = []
        try:
            from .discovery import local_urls
        except ImportError:  # pragma: no cover - discovery is optional
            local_urls = None  # type: ignore[assignment]
        if local_urls is not None:
            try:
                for scheme, port in schemes:
                    urls += await asyncio.to_thread(local_urls, port, SUNBIRD_PATH, scheme)
            except OSError as exc:
                log.debug("cannot list this host's addresses: %s", exc)
        if not urls and request is not None:
            scheme = "https" if request.secure else "http"
            return [f"{scheme}://{request.host}{SUNBIRD_PATH}"], None
        return urls, None if urls else "This host has no network address yet."

    # ---- access ----------------------------------------------------------------------------------------------

    def _presented_token_ok(self, request: web.Request) -> bool:
        presented = token_from(request)
        return bool(presented) and self.admin.allows(presented)

    def _cookie_ok(self, request: web.Request) -> bool:
        value = request.cookies.get(_COOKIE, "")
        return bool(value) and hmac.compare_digest(value.encode(), self._cookie.encode())

    def allowed(self, request: web.Request) -> bool:
        """Whether this request may read status: no token needed, or the token, or the login cookie."""
        return not self.needs_token or self._presented_token_ok(request) or self._cookie_ok(request)

    def _set_cookie(self, response: web.StreamResponse, request: web.Request) -> None:
        response.set_cookie(_COOKIE, self._cookie, max_age=_COOKIE_MAX_AGE_S, path="/", httponly=True,
                            samesite="Strict", secure=request.secure or None)

    # ---- handlers --------------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        """The status page for a phone or laptop browser (HTML, no external assets, no script needed)."""
        if not self.allowed(request):
            return _html_response(401, "Log in", _login_html(None))
        facts = await self.facts(request)
        synced = request.query.get("synced")
        body = _render_page(facts, synced=synced if synced in ("0", "1", "denied") else None,
                           can_import=_has_route(request, "/import"), logged_in=self._cookie_ok(request))
        response = _html_response(200, "Status", body, refresh=True)
        if self.needs_token and not self._cookie_ok(request):
            self._set_cookie(response, request)  # came with ?token= or a header: keep it on this browser
        return response

    async def login(self, request: web.Request) -> web.Response:
        """The login form's target: the admin token buys an HttpOnly cookie that lets this browser read status."""
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not self.admin.allows(token.strip()):
            log.warning("status page login refused from %s: wrong admin token", request.remote)
            return _html_response(401, "Log in", _login_html("That is not the admin token. Try again."))
        response = _see_other("/")
        self._set_cookie(response, request)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """Forget the login cookie on this browser."""
        response = _see_other("/")
        response.del_cookie(_COOKIE, path="/")
        return response

    async def status_json(self, request: web.Request) -> web.Response:
        """Every fact the page shows, for `telemetry-hub status` and scripts (same token rule as the page)."""
        if not self.allowed(request):
            return sunbird_error(401, "missing or wrong admin token: send 'Authorization: Bearer <admin token>' "
                                      "(the token is in <data_dir>/admin-token)")
        return json_response(200, await self.facts(request), {"Cache-Control": "no-store"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus metrics (same token rule as the page; Prometheus sends it as a bearer token)."""
        if not self.allowed(request):
            return web.Response(status=401, text="missing or wrong admin token: send 'Authorization: Bearer "
                                                 "<admin token>'\n", headers={"WWW-Authenticate": "Bearer"})
        body, content_type = await self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _answer(error: str | None) -> str:
    """Upstream's answer from ForwardState.last_error ("auth: <body>")."""
    if not error:
        return "HTTP 401"
    kind, sep, rest = error.partition(": ")
    return rest if sep and kind.isidentifier() else error


def _has_route(request: web.Request, path: str) -> bool:
    return any(r.canonical == path for r in request.app.router.resources())


def _without_credentials(url: str) -> str:
    if not url:
        return ""
    try:
        return str(URL(url).with_user(None))
    except ValueError:
        return url


# ---- words and numbers ---------------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, rest = divmod(s, 86400)
    h = rest // 3600
    return f"{d} day{'s' if d != 1 else ''} {h} h" if h else f"{d} day{'s' if d != 1 else ''}"


def _ago(when: float | None, now: float) -> str:
    if not when:
        return "never"
    delta = now - when
    if delta < -5:
        return f"in {_duration(-delta)}"
    if delta < 10:
        return "just now"
    return f"{_duration(delta)} ago"


def _clock(when: float | None) -> str:
    if not when:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _n(value: int) -> str:
    return f"{value:,}"


# ---- plain text (telemetry-hub status) -----------------------------------------------------------------------


def _printable(text: str) -> str:
    """Device ids and upstream answers are not ours: no escape sequence reaches the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def format_text(facts: Mapping[str, Any], url: str = "") -> str:
    """The facts as a few aligned lines for a terminal over SSH."""
    now = float(facts["now"])
    ev, up, st, dev = facts["events"], facts["upstream"], facts["store"], facts["devices"]
    hub = facts["hub"]
    where = f" at {url}" if url else ""
    branch = f", branch {hub['branch']}" if hub.get("branch") else ""
    lines: list[tuple[str, str]] = []
    lines.append(("State", f"{facts['state_text'].upper() if facts['state'] != 'ok' else facts['state_text']}"))
    marks = {"critical": "!!", "warning": " !", "note": " -"}
    problem_lines = [f"  {marks.get(p['severity'], ' -')} {_printable(p['message'])}" for p in facts["problems"]]
    lines.append(("Waiting", f"{_n(ev['backlog'])} events for upstream"))
    if up["configured"]:
        link = f"{up['link_text']} ({up['url']})"
    else:
        link = "not configured (upstream.url): events are kept here only"
    lines.append(("Upstream", link))
    lines.append(("Last delivery", _ago(up["last_delivery_at"], now)))
    if up["last_error"]:
        lines.append(("Last error", f"{up['last_error']} ({_ago(up['last_error_at'], now)})"))
    lines.append(("Delivered", f"{_n(ev['delivered'])} events"))
    lines.append(("Received", f"{_n(ev['received'])} events in all ({_n(ev['duplicates'])} duplicates, "
                              f"{_n(ev['quarantined'])} quarantined)"))
    day = facts["last_24h"]
    lines.append(("Last 24 h", f"{_n(day['received'])} new events received, {_n(day['delivered'])} delivered"))
    latest = dev["recent"][0] if dev["recent"] else None
    seen = f" (latest {latest['did']}, {_ago(latest['last_seen'], now)})" if latest else ""
    lines.append(("Devices", f"{_n(dev['count'])}{seen}"))
    for key, label in (("quarantine", "Quarantined"), ("dead_letters", "Dead letters")):
        part = facts[key]
        top = "; ".join(f"{r['reason']} ({_n(r['count'])})" for r in part["top_reasons"][:3])
        lines.append((label, f"{_n(part['count'])}" + (f": {top}" if top else "")))
    used = f" ({100 * st['used_fraction']:.0f}%)" if st["used_fraction"] is not None else ""
    lines.append(("Storage", f"{_bytes(st['db_bytes'])} of {_bytes(st['max_bytes'])} cap{used}; "
                             f"{_bytes(st['free_bytes'])} free on disk"))
    for i, device_url in enumerate(facts["device_urls"]):
        lines.append(("Device URL" if i == 0 else "", device_url))
    if facts.get("device_urls_note"):
        lines.append(("", str(facts["device_urls_note"])))
    width = max(len(label) for label, _ in lines) + 2
    out = [f"telemetry-hub {hub['version']}{where}{branch}"]
    for label, value in lines:
        out.append(f"{(label + ':') if label else '':<{width}}{_printable(value)}")
        if label == "State":
            out.extend(problem_lines)
    return "\n".join(out)


# ---- HTML ------------------------------------------------------------------------------------------------------

# Reload every 30 s, but never while someone is typing the token (a meta refresh would wipe it).
_SCRIPT = (
    "(function(){var t=document.getElementById('token');function r(){"
    "if(t&&(t.value||document.activeElement===t)){setTimeout(r,5000);return}location.replace('/')}"
    f"setTimeout(r,{_REFRESH_S * 1000})}})();"
)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()

_CSS = """
*{box-sizing:border-box}
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#f2f3ef}
main{max-width:62rem;margin:auto;padding:12px}
h1{font-size:1.35rem;margin:.2rem 0 .7rem}
h1 small{display:block;font-size:.95rem;font-weight:400;color:#555}
h2{font-size:1.05rem;margin:0 0 .6rem}
a{color:#0b5cad}
code{font-size:.92em;overflow-wrap:anywhere}
.state{border-radius:10px;padding:.75rem 1rem;margin-bottom:12px;color:#fff}
.state strong{font-size:1.2rem;display:block}
.state ul{margin:.35rem 0 0;padding-left:1.2rem}
.state li{margin:.25rem 0}
.state .note{opacity:.9}
.ok{background:#1e6b2e}.attention{background:#8a4b00}.failing{background:#a3231b}
.banner{border-radius:10px;padding:.7rem 1rem;margin-bottom:12px;background:#fff;border-left:8px solid #1e6b2e}
.banner.bad{border-color:#a3231b}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(10rem,1fr));gap:10px;margin-bottom:12px}
.card{background:#fff;border-radius:10px;padding:.8rem 1rem;box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:0}
section.card{margin-bottom:12px}
.label{font-size:.85rem;color:#555;text-transform:uppercase;letter-spacing:.03em}
.num{font-size:1.7rem;font-weight:700;line-height:1.2;overflow-wrap:anywhere}
.sub{font-size:.9rem;color:#555}
.link-up{color:#1e6b2e}.link-down,.link-auth-failed{color:#a3231b}.link-unknown,.link-disabled{color:#555}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:12px;margin-bottom:12px}
.two>section.card{margin-bottom:0}
label{display:block;font-weight:600;margin:.6rem 0 .3rem}
input,button{font:inherit}
input[type=password]{width:100%;min-height:2.9rem;padding:.5rem .7rem;border:2px solid #888;border-radius:8px}
button,.button{display:block;width:100%;min-height:2.9rem;margin-top:.7rem;border:0;border-radius:8px;
background:#0b5cad;color:#fff;font-weight:700;text-align:center;text-decoration:none;line-height:2.9rem;cursor:pointer}
.button.secondary{background:#e4eaf3;color:#0b5cad}
.hint{color:#555;font-size:.92rem;margin:.2rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem .9rem;margin:0}
dt{color:#555}dd{margin:0;min-width:0;overflow-wrap:anywhere}
table{width:100%;border-collapse:collapse;font-size:.93rem}
th{text-align:left;color:#555;font-weight:600;border-bottom:2px solid #ddd;padding:.3rem .4rem;white-space:nowrap}
td{border-bottom:1px solid #eee;padding:.35rem .4rem;vertical-align:top}
td.did{word-break:break-all}
td.n,th.n{text-align:right;white-space:nowrap}
td.when{white-space:nowrap}
ol.reasons{margin:.3rem 0 .8rem;padding-left:1.3rem}
ol.reasons li{overflow-wrap:anywhere;margin:.2rem 0}
.chartbox{display:grid;grid-template-columns:2.4rem 1fr;grid-template-rows:9rem auto;max-width:44rem;
margin-top:.8rem}
.yaxis{position:relative;font-size:.8rem;color:#555}
.yaxis span{position:absolute;right:.45rem;transform:translateY(-50%);line-height:1}
.chart{width:100%;height:100%;display:block}
.chart .r{fill:#0b5cad}.chart .d{fill:#2e9e4f}.chart .axis{stroke:#999;stroke-width:1}
.chart .grid{stroke:#e3e3e3;stroke-width:1}
.xaxis{grid-column:2;position:relative;height:1.4rem;font-size:.8rem;color:#555}
.xaxis span{position:absolute;top:.25rem;white-space:nowrap}
.xaxis span.now{right:0}
.legend{font-size:.9rem;margin:.4rem 0 0}
.key{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;vertical-align:-.05rem;margin-right:.3rem}
.key.r{background:#0b5cad}.key.d{background:#2e9e4f;margin-left:.9rem}
.bar{height:14px;background:#e6e6e6;border-radius:7px;overflow:hidden;margin:.3rem 0 .5rem}
.bar span{display:block;height:100%;background:#0b5cad}
.bar.warn span{background:#b36b00}.bar.full span{background:#a3231b}
.urls{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.urls ul{margin:0;padding-left:1.1rem;flex:1 1 14rem;min-width:0}
.urls li{margin:.2rem 0}
svg.qr{width:180px;height:180px;flex:none;shape-rendering:crispEdges}
footer{font-size:.85rem;color:#555;margin:16px 0 8px;overflow-wrap:anywhere}
#actions form,#actions .button{max-width:30rem}
footer form{display:inline}
footer button{display:inline;width:auto;min-height:0;margin:0;padding:0;background:none;color:#0b5cad;
font-weight:400;text-decoration:underline;line-height:inherit}
"""


def _html_response(status: int, title: str, body: str, *, refresh: bool = False) -> web.Response:
    head_extra = ""
    if refresh:
        head_extra = f'<noscript><meta http-equiv="refresh" content="{_REFRESH_S}; url=/"></noscript>'
    script = f"<script>{_SCRIPT}</script>" if refresh else ""
    page = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"{head_extra}<title>{html.escape(title)} - telemetry-hub</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main>{script}</body></html>\n"
    )
    return web.Response(status=status, text=page, content_type="text/html", headers={
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
    })


def _login_html(error: str | None) -> str:
    e = html.escape
    err = f'<div class="banner bad" id="login-error">{e(error)}</div>' if error else ""
    return (
        "<h1>Telemetry hub</h1>" + err +
        '<section class="card"><p>The status page needs the hub\'s admin token. It is in the file '
        "<code>admin-token</code> in the hub's data directory (on a Pi: "
        "<code>sudo cat /var/lib/telemetry-hub/admin-token</code>).</p>"
        '<form method="post" action="/login"><label for="login-token">Admin token</label>'
        '<input id="login-token" name="token" type="password" autocomplete="current-password" required>'
        '<button id="login" type="submit">Open the status page</button></form>'
        '<p class="hint">This browser then stays logged in; nothing else is stored.</p></section>'
    )


def _nice_ceiling(value: int) -> int:
    if value <= 0:
        return 1
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def _chart_html(hourly: Sequence[Mapping[str, Any]]) -> str:
    """Received and delivered events per hour: inline SVG bars stretched to the screen's width, with the axis
    labels in HTML around it so they stay readable on a phone and a laptop alike (no script)."""
    width, height = 10 * max(1, len(hourly)), 100  # one 10-unit slot per hour
    peak = max([int(h["received"]) for h in hourly] + [int(h["delivered"]) for h in hourly] + [0])
    ymax = _nice_ceiling(peak)
    total_r = sum(int(h["received"]) for h in hourly)
    total_d = sum(int(h["delivered"]) for h in hourly)
    parts = [
        '<div class="chartbox"><div class="yaxis" aria-hidden="true">'
        f'<span style="top:0">{_short(ymax)}</span><span style="top:50%">{_short(ymax // 2) if ymax > 1 else ""}</span>'
        '<span style="top:100%">0</span></div>'
        f'<svg class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="Events per hour over the last 24 hours: {total_r} new events received, {total_d} delivered">'
        f'<line class="grid" x1="0" y1="0.5" x2="{width}" y2="0.5" vector-effect="non-scaling-stroke"/>'
        f'<line class="grid" x1="0" y1="50" x2="{width}" y2="50" vector-effect="non-scaling-stroke"/>'
    ]
    labels = []
    for i, h in enumerate(hourly):
        start = float(h["hour_start"])
        label = f"{time.strftime('%H:00', time.localtime(start))}-{time.strftime('%H:00', time.localtime(start + 3600))}"
        for j, (kind, cls, words) in enumerate((("received", "r", "new events received"), ("delivered", "d", "delivered"))):
            n = int(h[kind])
            bh = height * n / ymax
            if n and bh < 1.5:
                bh = 1.5  # a small but non-zero hour stays visible
            parts.append(
                f'<rect class="{cls}" x="{i * 10 + 1 + j * 4}" y="{height - bh:.2f}" width="4" height="{bh:.2f}">'
                f"<title>{label}: {n:,} {words}</title></rect>"
            )
        if i % 6 == 0:
            labels.append(f'<span style="left:{100 * i / len(hourly):.2f}%">{time.strftime("%H:00", time.localtime(start))}</span>')
    parts.append(f'<line class="axis" x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" '
                 'vector-effect="non-scaling-stroke"/></svg>')
    labels.append('<span class="now">now</span>')
    parts.append(f'<div class="xaxis" aria-hidden="true">{"".join(labels)}</div></div>')
    return "".join(parts)


def _short(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1000:
        return f"{n / 1000:g}k"
    return str(n)


def _qr_svg(text: str) -> str:
    """A QR code as inline SVG (quiet zone included) that a phone camera can scan."""
    return segno.make(text, error="m").svg_inline(scale=1, border=4, omitsize=True, dark="#000", light="#fff",
                                                  svgclass="qr")


def _render_page(facts: Mapping[str, Any], *, synced: str | None = None, can_import: bool = False,
                logged_in: bool = False) -> str:
    """The status page body from `Status.facts()`; every value from outside is escaped."""
    e = html.escape
    now = float(facts["now"])
    ev, up, st, dev, hub = facts["events"], facts["upstream"], facts["store"], facts["devices"], facts["hub"]
    out: list[str] = []
    branch = f" <small>{e(hub['branch'])}</small>" if hub.get("branch") else ""
    out.append(f"<h1>Telemetry hub{branch}</h1>")

    state = facts["state"]
    items = "".join(f'<li class="{e(p["severity"])}">{e(p["message"])}</li>' for p in facts["problems"])
    out.append(f'<section class="state {e(state)}" id="state" data-state="{e(state)}">'
               f"<strong>{e(facts['state_text'])}</strong>{f'<ul>{items}</ul>' if items else ''}</section>")

    if synced == "1":
        out.append('<div class="banner" id="sync-result">Sync finished: everything waiting was delivered.</div>')
    elif synced == "denied":
        out.append('<div class="banner bad" id="sync-result">Sync was not started: the admin token was wrong. '
                   "Type the token from the hub's admin-token file.</div>")
    elif synced == "0":
        why = up["last_error"] or ("no upstream is configured" if not up["configured"] else "it did not finish in time")
        out.append(f'<div class="banner bad" id="sync-result">Sync did not deliver everything: {e(str(why))}. '
                   f"{_n(ev['backlog'])} events still waiting.</div>")

    last = up["last_delivery_at"]
    out.append('<div class="grid">')
    out.append(f'<div class="card"><div class="label">Waiting for upstream</div>'
               f'<div class="num" id="backlog" data-n="{ev["backlog"]}">{_n(ev["backlog"])}</div>'
               f'<div class="sub">events</div></div>')
    out.append(f'<div class="card"><div class="label">Last delivery</div>'
               f'<div class="num" id="last-delivery" title="{e(_clock(last))}">{e(_ago(last, now))}</div>'
               f'<div class="sub"><span id="delivered" data-n="{ev["delivered"]}">{_n(ev["delivered"])}</span> '
               f"delivered in all</div></div>")
    out.append(f'<div class="card"><div class="label">Upstream link</div>'
               f'<div class="num link-{e(up["link"])}" id="link" data-link="{e(up["link"])}">{e(up["link_text"])}</div>'
               f'<div class="sub">{e(_link_sub(up, now))}</div></div>')
    latest = dev["recent"][0]["last_seen"] if dev["recent"] else None
    out.append(f'<div class="card"><div class="label">Devices</div>'
               f'<div class="num" id="devices-count" data-n="{dev["count"]}">{_n(dev["count"])}</div>'
               f'<div class="sub">last seen {e(_ago(latest, now))}</div></div>')
    out.append("</div>")

    # Actions: Sync now (admin token typed each time: the login cookie only lets a browser read).
    import_link = ('<a class="button secondary" id="import" href="/import">Import telemetry files</a>'
                   if can_import else "")
    out.append(
        '<section class="card" id="actions"><h2>Send now</h2>'
        '<p class="hint">Sends everything waiting to the institute\'s server now, without waiting for the '
        "next retry or upload window.</p>"
        f'<form method="post" action="/admin/sync?timeout={_SYNC_TIMEOUT_S}">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required>'
        '<button id="sync" type="submit">Sync now</button></form>'
        f"{import_link}</section>"
    )

    day = facts["last_24h"]
    out.append(
        '<section class="card" id="hourly"><h2>Events per hour, last 24 hours</h2>'
        f"{_chart_html(facts['hourly'])}"
        '<p class="legend"><span class="key r"></span>new events received '
        f'<span id="received-24h">{_n(day["received"])}</span>'
        '<span class="key d"></span>delivered '
        f'<span id="delivered-24h">{_n(day["delivered"])}</span></p></section>'
    )

    out.append('<div class="two">')
    rows = [
        ("Server", f"<code>{e(up['url'])}</code>" if up["configured"] else "not configured (upstream.url)"),
        ("Link", e(up["link_text"])),
        ("Last delivery", f"{e(_ago(last, now))}" + (f" <span class=\"hint\">({e(_clock(last))})</span>" if last else "")),
    ]
    if up["last_error"]:
        rows.append(("Last error", f'<span id="last-error">{e(up["last_error"])}</span> '
                                   f'<span class="hint">({e(_ago(up["last_error_at"], now))})</span>'))
    if up["waiting_for"]:
        rows.append(("Waiting for", e(up["waiting_for"])))
    if up["next_attempt_at"]:
        rows.append(("Next try", e(_ago(up["next_attempt_at"], now))))
    if up["errors"]:
        rows.append(("Errors since start", e(", ".join(f"{k} {v:,}" for k, v in up["errors"].items()))))
    out.append('<section class="card" id="upstream"><h2>Upstream</h2><dl>'
               + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl></section>")

    used = st["db_bytes"] / st["max_bytes"] if st["max_bytes"] else 0.0  # unrounded, like the assessment
    bar_cls = "full" if not st["accepting"] else "warn" if used >= st["warn_fraction"] else ""
    out.append(
        '<section class="card" id="storage"><h2>Storage</h2>'
        f'<div class="bar {bar_cls}" title="{100 * used:.0f}% of the cap"><span style="width:{min(100.0, 100 * used):.1f}%">'
        "</span></div>"
        f'<dl><dt>Database</dt><dd id="db-size">{e(_bytes(st["db_bytes"]))} of {e(_bytes(st["max_bytes"]))} cap '
        f"({100 * used:.0f}%)</dd>"
        f'<dt>Free disk</dt><dd id="free-disk">{e(_bytes(st["free_bytes"]))} '
        f'<span class="hint">(refuses below {e(_bytes(st["min_free_bytes"]))})</span></dd>'
        f"<dt>Received</dt><dd>{_n(ev['received'])} events, {_n(ev['duplicates'])} duplicates</dd>"
        f"<dt>New data</dt><dd>{'accepted' if st['accepting'] else 'refused'}</dd></dl></section>"
    )
    out.append("</div>")

    if dev["recent"]:
        trs = "".join(
            f'<tr><td class="did">{e(d["did"])}</td><td class="when" title="{e(_clock(d["last_seen"]))}">'
            f'{e(_ago(d["last_seen"], now))}</td><td class="n">{_n(d["events"])}</td></tr>'
            for d in dev["recent"]
        )
        more = (f'<p class="hint">The {len(dev["recent"])} most recent of {_n(dev["count"])}.</p>'
                if dev["count"] > len(dev["recent"]) else "")
        table = (f'<table id="devices"><thead><tr><th>Device</th><th>Last seen</th><th class="n">Events</th></tr>'
                 f"</thead><tbody>{trs}</tbody></table>{more}")
    else:
        table = '<p class="hint">No device has sent telemetry yet.</p>'
    out.append(f'<section class="card"><h2>Devices</h2>{table}</section>')

    def reasons(key: str, title: str, empty: str, hint: str) -> str:
        part = facts[key]
        lis = "".join(f'<li>{e(r["reason"])} &mdash; <b>{_n(r["count"])}</b></li>' for r in part["top_reasons"])
        body = (f'<ol class="reasons">{lis}</ol><p class="hint">{hint}</p>' if part["count"]
                else f'<p class="hint">{empty}</p>')
        return (f'<section class="card" id="{key.replace("_", "-")}"><h2>{title}: '
                f'<span class="count" data-n="{part["count"]}">{_n(part["count"])}</span></h2>{body}</section>')

    out.append('<div class="two">')
    out.append(reasons("quarantine", "Quarantined", "None: every event devices sent was well-formed.",
                       "Malformed events, kept aside and never sent on; the most common reasons are listed."))
    out.append(reasons("dead_letters", "Dead letters", "None: upstream accepted everything sent.",
                       "Events the institute's server refused. "
                       "<code>telemetry-hub dead-letter list</code> shows them."))
    out.append("</div>")

    urls = facts["device_urls"]
    url_items = "".join(f"<li><code>{e(u)}</code></li>" for u in urls)
    note = f'<p class="hint">{e(facts["device_urls_note"])}</p>' if facts.get("device_urls_note") else ""
    qr = _qr_svg(urls[0]) if urls else ""
    out.append(
        '<section class="card" id="connect"><h2>Connect devices</h2>'
        '<p class="hint">Set this as the telemetry URL in the Sunbird app or desktop client, or scan the code.</p>'
        f'<div class="urls">{qr}<ul>{url_items}</ul></div>{note}</section>'
    )

    logout = ('<form method="post" action="/logout"><button type="submit" id="logout">Log out</button></form>'
              if logged_in else "")
    out.append(
        f"<footer>telemetry-hub {e(hub['version'])} &middot; hub {e(hub['id'])} &middot; "
        f"up {e(_duration(now - float(hub['started_at'])))} &middot; "
        f"figures from {e(_clock(now))}, refreshed every {_REFRESH_S} s &middot; "
        '<a href="/status.json">JSON</a> &middot; <a href="/metrics">metrics</a> '
        f"{logout}</footer>"
    )
    return "".join(out)


def _link_sub(up: Mapping[str, Any], now: float) -> str:
    if not up["configured"]:
        return "events stay on this hub"
    if up["link"] == "down" and up["unreachable_since"]:
        return f"for {_duration(now - float(up['unreachable_since']))}"
    if up["link"] == "auth-failed":
        return "fix upstream.api_key_file"
    if up["next_attempt_at"]:
        return f"next try {_ago(up['next_attempt_at'], now)}"
    return ""
