"""The HTML pages: Jinja2 templates in `templates/`, styles and the refresh script in `static/`, inlined.

The pages load nothing from elsewhere (the CSP is `default-src 'none'`): a phone on the branch Wi-Fi gets one
response per page. The stylesheet and the script are read once, at import, from the installed package and put
in a `<style>` and a `<script>` element; the script is allowed by its sha256, computed from exactly the text
inlined. Values are escaped like `html.escape` does (quotes too) unless they are `markupsafe.Markup`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import jinja2
import segno
from aiohttp import web
from jinja2.ext import Extension
from markupsafe import Markup

from ..words import ago, clock, duration_text, nice_ceiling, short_number, size_text, thousands

__all__ = [
    "Bar",
    "Chart",
    "chart",
    "import_form_page",
    "import_page",
    "import_refused_page",
    "import_report_page",
    "login_page",
    "page",
    "qr_svg",
    "render",
    "status_body_context",
    "status_page",
]

_REFRESH_S = 30  # the status page reloads itself this often (s); static/refresh.js says the same
_SYNC_TIMEOUT_S = 30  # how long the Sync now button waits for the outcome (s)
_CHART_HEIGHT = 100  # SVG units; each hour gets a 10-unit slot


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text("utf-8")


_STATUS_CSS = Markup(_static("status.css"))  # ours, not user input: inlined as is
_IMPORT_CSS = Markup(_static("import.css"))
_SCRIPT = _static("refresh.js")
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
if f"setTimeout(reload, {_REFRESH_S * 1000})" not in _SCRIPT:  # the footer and <noscript> say _REFRESH_S
    raise RuntimeError(f"static/refresh.js does not reload every {_REFRESH_S} s like pages._REFRESH_S says")

_STATUS_CSP = (
    f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_IMPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"

# The line break after the doctype stays (\x3c is "<": the pattern, not markup, lives here).
_LINE_BREAK_BETWEEN_TAGS = re.compile(r"(?:(?<=>)(?<!\x3c!doctype html>)|(?<=%\})|(?<=#\}))[ \t]*\n\s*(?=<|\{%|\{#)")


class _LineBreaksBetweenTags(Extension):
    """Templates are written one element a line; the page is sent as compact as before: a line break (and the
    indentation after it) between a tag or statement and the next is dropped when the template is loaded.
    Whitespace within a line, and line breaks next to text or a `{{ value }}`, are output as written."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return _LINE_BREAK_BETWEEN_TAGS.sub("", source)


def _escaped(value: Any) -> Any:
    """Every `{{ value }}` escaped as `html.escape` does (`'` as `&#x27;`), not markupsafe's `&#39;`."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value)))


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader(__package__, "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    finalize=_escaped,
    keep_trailing_newline=True,
    extensions=[_LineBreaksBetweenTags],
)


# ---- responses -------------------------------------------------------------------------------------------------


def render(template: str, title: str, *, refresh: bool = False, import_styles: bool = False, **context: Any) -> str:
    """A whole page as text: `template` (in templates/) inside the shell base.html."""
    return _ENV.get_template(template).render(
        title=title,
        refresh=refresh,
        refresh_s=_REFRESH_S,
        stylesheet=_IMPORT_CSS if import_styles else _STATUS_CSS,
        script=Markup(_SCRIPT),
        **context,
    )


def page(status: int, template: str, title: str, *, refresh: bool = False, **context: Any) -> web.Response:
    """A status-side page (status, login): its styles, the refresh script if `refresh`, and no caching."""
    text = render(template, title, refresh=refresh, **context)
    return _response(status, text, _STATUS_CSP)


def import_page(status: int, template: str, title: str, **context: Any) -> web.Response:
    """An import page: its own styles, no script (the CSP allows none), and no caching."""
    text = render(template, title, import_styles=True, **context)
    return _response(status, text, _IMPORT_CSP)


def _response(status: int, text: str, csp: str) -> web.Response:
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",  # no-referrer would make a form post's Origin "null"
            "Content-Security-Policy": csp,
        },
    )


def status_page(
    facts: Mapping[str, Any],
    *,
    synced: str | None = None,
    can_import: bool = False,
    logged_in: bool = False,
    csrf: str = "",
) -> web.Response:
    """The status page (200, auto-refreshing) from `Status.facts()`; `csrf` is the session's form token."""
    context = status_body_context(facts, synced=synced, can_import=can_import, logged_in=logged_in)
    return page(200, "status.html", "Status", refresh=True, csrf=csrf, **context)


def login_page(
    status: int = 401, error: str | None = None, *, token_place: str = "", code_minutes: float = 10
) -> web.Response:
    """The sign-in form (admin token or a short sign-in code) that stands in for the status page."""
    return page(
        status,
        "login.html",
        "Sign in",
        error=error,
        token_place=token_place or "the file admin-token in the hub's data directory",
        code_minutes=f"{code_minutes:g}",
    )


def import_form_page(csrf: str = "") -> web.Response:
    """The upload form for a phone's browser; signed in (`csrf` given), it asks for no token."""
    return import_page(200, "import_form.html", "Import telemetry files", csrf=csrf)


class ImportReportLike(Protocol):
    """What the report page reads of `hub.imports.ImportReport`."""

    file: str
    error: str | None
    already_imported: bool

    @property
    def ok(self) -> bool: ...

    def headline(self) -> str: ...

    def details(self) -> list[str]: ...


def import_report_page(reports: Sequence[ImportReportLike]) -> web.Response:
    """One section per uploaded file: what it became, or why nothing was imported."""
    return import_page(200, "import_report.html", "Import report", reports=list(reports))


def import_refused_page(status: int, message: str) -> web.Response:
    """The whole upload was refused (token, size, form): say why."""
    return import_page(status, "import_refused.html", "Import refused", message=message)


# ---- the status page's context ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One bar of the hourly chart, in SVG units (y and height already formatted)."""

    cls: str  # r (received) | d (delivered)
    x: int
    y: str
    height: str
    title: str


@dataclass(frozen=True)
class Tick:
    """A time label under the chart, `left` in percent of its width."""

    left: str
    text: str


@dataclass(frozen=True)
class Chart:
    """The hourly chart's geometry and labels; status.html draws it."""

    width: int
    height: int
    y_top: str
    y_middle: str
    y_half: str
    y_axis: str
    total_received: int
    total_delivered: int
    bars: list[Bar]
    ticks: list[Tick]


def chart(hourly: Sequence[Mapping[str, Any]]) -> Chart:
    """Received and delivered events per hour as bars scaled to a round maximum; a non-zero hour stays visible."""
    height = _CHART_HEIGHT
    width = 10 * max(1, len(hourly))
    peak = max([int(h["received"]) for h in hourly] + [int(h["delivered"]) for h in hourly] + [0])
    ymax = nice_ceiling(peak)
    bars: list[Bar] = []
    ticks: list[Tick] = []
    for i, h in enumerate(hourly):
        start = float(h["hour_start"])
        label = (
            f"{time.strftime('%H:00', time.localtime(start))}-{time.strftime('%H:00', time.localtime(start + 3600))}"
        )
        for j, (kind, cls, words) in enumerate(
            (("received", "r", "new events received"), ("delivered", "d", "delivered"))
        ):
            n = int(h[kind])
            bh = height * n / ymax
            if n and bh < 1.5:
                bh = 1.5  # a small but non-zero hour stays visible
            bars.append(Bar(cls, i * 10 + 1 + j * 4, f"{height - bh:.2f}", f"{bh:.2f}", f"{label}: {n:,} {words}"))
        if i % 6 == 0:
            ticks.append(Tick(f"{100 * i / len(hourly):.2f}", time.strftime("%H:00", time.localtime(start))))
    return Chart(
        width=width,
        height=height,
        y_top=short_number(ymax),
        y_middle=short_number(ymax // 2) if ymax > 1 else "",
        y_half=f"{height // 2}",
        y_axis=f"{height - 0.5}",
        total_received=sum(int(h["received"]) for h in hourly),
        total_delivered=sum(int(h["delivered"]) for h in hourly),
        bars=bars,
        ticks=ticks,
    )


def qr_svg(text: str) -> Markup:
    """A QR code as inline SVG (quiet zone included) that a phone camera can scan; segno's markup, trusted."""
    return Markup(
        segno.make(text, error="m").svg_inline(
            scale=1, border=4, omitsize=True, dark="#000", light="#fff", svgclass="qr"
        )
    )


def link_sub(up: Mapping[str, Any], now: float) -> str:
    """The line under the upstream link's state: what it means or what happens next."""
    if not up["configured"]:
        return "events stay on this hub"
    if up["link"] == "down" and up["unreachable_since"]:
        return f"for {duration_text(now - float(up['unreachable_since']))}"
    if up["link"] == "auth-failed":
        return "fix upstream.api_key_file"
    if up["next_attempt_at"]:
        return f"next try {ago(up['next_attempt_at'], now)}"
    return ""


@dataclass(frozen=True)
class _Reason:
    reason: str
    count: str


@dataclass(frozen=True)
class _Reasons:
    id: str
    count: int
    count_text: str
    reasons: list[_Reason]


def _reasons(facts: Mapping[str, Any], key: str) -> _Reasons:
    part = facts[key]
    return _Reasons(
        id=key.replace("_", "-"),
        count=part["count"],
        count_text=thousands(part["count"]),
        reasons=[_Reason(str(r["reason"]), thousands(r["count"])) for r in part["top_reasons"]],
    )


def status_body_context(
    facts: Mapping[str, Any], *, synced: str | None = None, can_import: bool = False, logged_in: bool = False
) -> dict[str, Any]:
    """What status.html needs from `Status.facts()`: the words already worded, the chart as geometry, the QR
    code as markup. `synced` is the ?synced= answer of a Sync now ("1", "0", "denied") or None."""
    now = float(facts["now"])
    ev, up, st, dev, hub = facts["events"], facts["upstream"], facts["store"], facts["devices"], facts["hub"]
    last = up["last_delivery_at"]
    latest = dev["recent"][0]["last_seen"] if dev["recent"] else None
    used = st["db_bytes"] / st["max_bytes"] if st["max_bytes"] else 0.0  # unrounded, like the assessment
    urls = facts["device_urls"]
    day = facts["last_24h"]
    return {
        "branch": hub.get("branch") or "",
        "state": facts["state"],
        "state_text": facts["state_text"],
        "problems": [_Problem(str(p["severity"]), str(p["message"])) for p in facts["problems"]],
        "synced": synced,
        "sync_failure": str(
            up["last_error"] or ("no upstream is configured" if not up["configured"] else "it did not finish in time")
        ),
        "backlog": ev["backlog"],
        "backlog_text": thousands(ev["backlog"]),
        "delivered": ev["delivered"],
        "delivered_text": thousands(ev["delivered"]),
        "last_delivery_ago": ago(last, now),
        "last_delivery_clock": clock(last),
        "link": up["link"],
        "link_text": up["link_text"],
        "link_sub": link_sub(up, now),
        "device_count": dev["count"],
        "device_count_text": thousands(dev["count"]),
        "device_latest_ago": ago(latest, now),
        "can_import": can_import,
        "sync_timeout_s": _SYNC_TIMEOUT_S,
        "chart": chart(facts["hourly"]),
        "received_24h": thousands(day["received"]),
        "delivered_24h": thousands(day["delivered"]),
        "upstream_configured": bool(up["configured"]),
        "upstream_url": up["url"],
        "last_error": up["last_error"] or "",
        "last_error_ago": ago(up["last_error_at"], now) if up["last_error"] else "",
        "waiting_for": up["waiting_for"] or "",
        "oldest_waiting_ago": ago(up.get("oldest_waiting_at"), now) if up.get("oldest_waiting_at") else "",
        "oldest_waiting_clock": clock(up.get("oldest_waiting_at")),
        "next_attempt_ago": ago(up["next_attempt_at"], now) if up["next_attempt_at"] else "",
        "errors_text": ", ".join(f"{k} {v:,}" for k, v in up["errors"].items()),
        "storage": _Storage(
            bar_class="full" if not st["accepting"] else "warn" if used >= st["warn_fraction"] else "",
            percent=f"{100 * used:.0f}",
            bar_width=f"{min(100.0, 100 * used):.1f}",
            db_size=size_text(st["db_bytes"]),
            cap=size_text(st["max_bytes"]),
            free=size_text(st["free_bytes"]),
            min_free=size_text(st["min_free_bytes"]),
            received=thousands(ev["received"]),
            duplicates=f"{thousands(ev['duplicates'])} duplicate{'s' if ev['duplicates'] != 1 else ''}",
            accepting=bool(st["accepting"]),
        ),
        "devices": [
            _Device(str(d["did"]), clock(d["last_seen"]), ago(d["last_seen"], now), thousands(d["events"]))
            for d in dev["recent"]
        ],
        "quarantine": _reasons(facts, "quarantine"),
        "dead_letters": _reasons(facts, "dead_letters"),
        "device_urls": [str(u) for u in urls],
        "device_urls_note": facts.get("device_urls_note") or "",
        "qr": qr_svg(urls[0]) if urls else "",
        "version": hub["version"],
        "hub_id": hub["id"],
        "uptime": duration_text(now - float(hub["started_at"])),
        "figures_clock": clock(now),
        "logged_in": logged_in,
    }


@dataclass(frozen=True)
class _Problem:
    severity: str
    message: str


@dataclass(frozen=True)
class _Storage:
    bar_class: str
    percent: str
    bar_width: str
    db_size: str
    cap: str
    free: str
    min_free: str
    received: str
    duplicates: str
    accepting: bool


@dataclass(frozen=True)
class _Device:
    did: str
    last_seen_clock: str
    last_seen_ago: str
    events: str
