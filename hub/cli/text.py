"""`telemetry-hub status` as a few aligned lines for a terminal over SSH."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..words import ago, printable, size_text, thousands

__all__ = ["format_text"]


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
    problem_lines = [f"  {marks.get(p['severity'], ' -')} {printable(p['message'])}" for p in facts["problems"]]
    lines.append(("Waiting", f"{thousands(ev['backlog'])} events for upstream"))
    if up["configured"]:
        link = f"{up['link_text']} ({up['url']})"
    else:
        link = "not configured (upstream.url): events are kept here only"
    lines.append(("Upstream", link))
    lines.append(("Last delivery", ago(up["last_delivery_at"], now)))
    if up["last_error"]:
        lines.append(("Last error", f"{up['last_error']} ({ago(up['last_error_at'], now)})"))
    lines.append(("Delivered", f"{thousands(ev['delivered'])} events"))
    lines.append(
        (
            "Received",
            f"{thousands(ev['received'])} events in all ({thousands(ev['duplicates'])} duplicate{'s' if ev['duplicates'] != 1 else ''}, "
            f"{thousands(ev['quarantined'])} quarantined)",
        )
    )
    day = facts["last_24h"]
    lines.append(
        ("Last 24 h", f"{thousands(day['received'])} new events received, {thousands(day['delivered'])} delivered")
    )
    latest = dev["recent"][0] if dev["recent"] else None
    seen = f" (latest {latest['did']}, {ago(latest['last_seen'], now)})" if latest else ""
    lines.append(("Devices", f"{thousands(dev['count'])}{seen}"))
    for key, label in (("quarantine", "Quarantined"), ("dead_letters", "Dead letters")):
        part = facts[key]
        top = "; ".join(f"{r['reason']} ({thousands(r['count'])})" for r in part["top_reasons"][:3])
        lines.append((label, f"{thousands(part['count'])}" + (f": {top}" if top else "")))
    used = f" ({100 * st['used_fraction']:.0f}%)" if st["used_fraction"] is not None else ""
    lines.append(
        (
            "Storage",
            f"{size_text(st['db_bytes'])} of {size_text(st['max_bytes'])} cap{used}; "
            f"{size_text(st['free_bytes'])} free on disk",
        )
    )
    for i, device_url in enumerate(facts["device_urls"]):
        lines.append(("Device URL" if i == 0 else "", device_url))
    if facts.get("device_urls_note"):
        lines.append(("", str(facts["device_urls_note"])))
    width = max(len(label) for label, _ in lines) + 2
    out = [f"telemetry-hub {hub['version']}{where}{branch}"]
    for label, value in lines:
        out.append(f"{(label + ':') if label else '':<{width}}{printable(value)}")
        if label == "State":
            out.extend(problem_lines)
    return "\n".join(out)
