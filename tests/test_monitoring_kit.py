"""The monitoring kit in contrib/: promtool accepts the scrape config and the alert rules, and every metric
the rules and the dashboard name is one the hub really exports.

Needs `promtool` (Debian package `prometheus`). Without it the promtool checks skip, except under CI
(CI=true), where a missing tool must not pass silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.events import js_request, make_events

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "contrib" / "prometheus"
DASHBOARD = ROOT / "contrib" / "grafana" / "telemetry-hub-dashboard.json"
METRIC = re.compile(r"\btelemetry_hub_[a-z_]+")


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool:
        return tool
    reason = "promtool is not installed (Debian package 'prometheus')"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
    pytest.skip(reason)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_alert_rules() -> None:
    tool = _promtool()
    r = _run(tool, "check", "rules", str(KIT / "telemetry-hub-alerts.yml"), cwd=KIT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    """The shipped config as a Prometheus host would have it: the token and the hub's certificate in files."""
    tool = _promtool()
    token, cert = tmp_path / "telemetry-hub-admin-token", tmp_path / "telemetry-hub-cert.pem"
    token.write_text("0123456789abcdef\n")
    cert.write_text("")
    config = (KIT / "prometheus.yml").read_text()
    assert "credentials_file: /etc/prometheus/telemetry-hub-admin-token" in config and "scheme: https" in config
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/", f"{tmp_path}/"))
    shutil.copy(KIT / "telemetry-hub-alerts.yml", tmp_path)
    r = _run(tool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 8 rules found" in r.stdout + r.stderr


async def test_rules_and_dashboard_name_only_metrics_the_hub_exports(start_hub, http, upstream) -> None:
    hub = await start_hub(upstream={"url": upstream.url})
    body, headers = js_request(make_events(3))
    async with http.post(hub.url + "/api/data/v1/telemetry", data=body, headers=headers) as r:
        assert r.status == 200
    async with http.get(hub.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    families = list(text_string_to_metric_families(text))
    exported = {s.name for f in families for s in f.samples}
    exported |= {f"{f.name}_total" for f in families if f.type == "counter"}  # labelled counters with no sample yet
    assert "telemetry_hub_state" in exported and "telemetry_hub_clock_synchronised" in exported
    dashboard = json.loads(DASHBOARD.read_text())
    named = set(METRIC.findall((KIT / "telemetry-hub-alerts.yml").read_text()))
    named |= set(METRIC.findall(json.dumps(dashboard)))
    assert named and named <= exported, f"not exported: {sorted(named - exported)}"
    assert dashboard["uid"] == "telemetry-hub" and len(dashboard["panels"]) >= 6
