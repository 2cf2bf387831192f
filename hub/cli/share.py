"""`import` and `export`: Share Telemetry files into and out of a hub, directly or through a running one."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from .. import secrets
from ..app import local_parts
from ..config import Config
from ..errors import HubError
from ..share import ImportReport, clean_name, export_archive, parse_since
from .client import HubClient
from .common import config_from, setup_logging

__all__ = ["add_commands"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=argparse.SUPPRESS, help="TOML config file (optional)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", help="the hub's data directory (default: from the config)")
    where.add_argument("--url", help="a running hub, e.g. http://192.168.1.10:9001")
    p.add_argument(
        "--token",
        help="admin token for --url; write --token=VALUE if it starts with '-' "
        "(default: auth.admin_token_file, else $TELEMETRY_HUB_ADMIN_TOKEN, "
        "else <data dir>/admin-token)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _config(args: argparse.Namespace) -> Config:
    cfg = config_from(args)
    setup_logging("warning")  # stdout carries the report; only trouble goes to stderr
    return cfg


def _client(args: argparse.Namespace, cfg: Config) -> HubClient:
    token = secrets.admin_token(cfg, args.token)
    if not token:
        raise HubError(
            "no admin token for --url: pass --token, set TELEMETRY_HUB_ADMIN_TOKEN, or run this on the "
            f"hub (it reads {secrets.admin_token_source(cfg)})"
        )
    return HubClient(args.url, token)


async def _import_local(cfg: Config, files: list[Path]) -> list[ImportReport]:
    async with local_parts(cfg) as parts:
        return [await parts.importer.import_file(f, f.name) for f in files]


def _import_via_url(client: HubClient, files: list[Path]) -> list[ImportReport]:
    reports: list[ImportReport | None] = []
    readable: list[Path] = []
    for f in files:
        try:
            with open(f, "rb"):
                pass
        except OSError as exc:
            reports.append(
                ImportReport(file=clean_name(f.name), error=f"{f.name}: cannot read the file ({exc.strerror or exc})")
            )
            continue
        readable.append(f)
        reports.append(None)
    if not readable:
        return [r for r in reports if r is not None]
    answered = iter(ImportReport.from_json(d) for d in client.upload("/admin/import", readable))
    return [r if r is not None else next(answered) for r in reports]


def _cmd_import(args: argparse.Namespace) -> int:
    cfg = _config(args)
    files = [Path(f) for f in args.files]
    reports = _import_via_url(_client(args, cfg), files) if args.url else asyncio.run(_import_local(cfg, files))
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2, ensure_ascii=False))
    else:
        for r in reports:
            print(f"{r.file}: {r.headline()}")
            for line in r.details():
                print(f"    {line}")
        failed = sum(1 for r in reports if not r.ok)
        print(
            f"{len(reports)} file{'s' if len(reports) != 1 else ''}, "
            f"{sum(r.new for r in reports)} new events, {failed} failed"
        )
    return 1 if any(not r.ok for r in reports) else 0


def _cmd_export(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        since_ms = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise HubError(str(exc)) from None
    out = Path(args.out)
    if out.exists() and not args.force:
        raise HubError(f"{out} exists already; nothing was written. Choose another --out, or add --force to replace it")
    pending = args.include != "all"
    if args.url:
        query = {"pending": "1"} if pending else {"all": "1"}
        if since_ms is not None:
            query["since"] = str(since_ms)
        headers = _client(args, cfg).download("/admin/export", query, out)
        events, batches = int(headers.get("X-Export-Events", "0")), int(headers.get("X-Export-Batches", "0"))
        size = out.stat().st_size
    else:
        report = export_archive(
            cfg.data_dir / "hub.db",
            out,
            hub_id=secrets.hub_id(cfg.data_dir, create=False),
            pending=pending,
            since_ms=since_ms,
        )
        events, batches, size = report.events, report.batches, report.size
    if args.json:
        print(json.dumps({"out": str(out), "events": events, "batches": batches, "bytes": size, "pending": pending}))
    else:
        print(
            f"wrote {out}: {events} events in {batches} batches ({size} bytes). Nothing was marked delivered: "
            "the hub still sends these events upstream, and duplicates are dropped by mid."
        )
    return 0


def add_commands(sub: Any) -> None:
    """Add `import` and `export` to the telemetry-hub command."""
    imp = sub.add_parser(
        "import",
        help="import Share Telemetry files (what students send) into the hub",
        description="Import Share Telemetry files: the app's .zip archive, a legacy .gsa, or telemetry JSON. "
        "Straight into a data directory (default: the configured one), or through a running hub "
        "(--url). A file imported before adds nothing.",
    )
    _common(imp)
    imp.add_argument("files", nargs="+", metavar="FILE", help="files to import")
    imp.set_defaults(func=_cmd_import)

    exp = sub.add_parser(
        "export",
        help="write the backlog to a telemetry archive ZIP (to carry on a USB stick)",
        description="Write events to a telemetry archive ZIP that any telemetry-hub (or the Sunbird app) imports. "
        "Marks nothing delivered: the events stay queued for upstream, which dedups by mid.",
    )
    _common(exp)
    exp.add_argument("--out", "-o", required=True, metavar="FILE", help="the ZIP file to write")
    exp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    exp.add_argument(
        "--since", metavar="WHEN", help="only events received since then: ISO date/time (local time) or epoch ms"
    )
    which = exp.add_mutually_exclusive_group()
    which.add_argument(
        "--pending",
        dest="include",
        action="store_const",
        const="pending",
        help="events not yet delivered upstream (the default)",
    )
    which.add_argument(
        "--all", dest="include", action="store_const", const="all", help="also delivered events the hub still keeps"
    )
    exp.set_defaults(func=_cmd_export, include="pending")
