"""Commands that ask a running hub: status, sync, dead-letter."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .client import error_text
from .common import client_for, remote_options
from .text import format_text

__all__ = ["add_commands"]


def _cmd_sync(args: argparse.Namespace) -> int:
    client = client_for(args)
    status, answer = client.request("POST", f"/admin/sync?timeout={args.timeout:g}", timeout=args.timeout + 10)
    if status != 200:
        print(f"sync refused ({status}): {error_text(answer)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"delivered {answer['delivered']} events; {answer['backlog']} still waiting; link {answer.get('link')}")
        if answer.get("error"):
            print(f"last error: {answer['error']}")
    return 0 if answer.get("ok") else 1


def _cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    status, answer = client.request("GET", "/status.json", timeout=args.timeout)
    if status != 200 or not isinstance(answer, dict) or "state" not in answer:
        print(f"status refused ({status}): {error_text(answer)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else format_text(answer, client.url))
    return 0 if answer.get("healthy") else 1


def _cmd_dead_letter(args: argparse.Namespace) -> int:
    client = client_for(args)
    answer: Any
    if args.action == "list":
        status, answer = client.request("GET", f"/admin/dead-letters?limit={args.limit}")
    elif args.all:
        status, answer = client.request("POST", "/admin/dead-letters/requeue", {"all": True})
    elif args.mids:
        status, answer = client.request("POST", "/admin/dead-letters/requeue", {"mids": args.mids})
    else:
        print("say which: --all, or one or more mids", file=sys.stderr)
        return 2
    if status != 200:
        print(f"refused ({status}): {error_text(answer)}", file=sys.stderr)
        return 1
    if args.json or args.action != "list":
        print(json.dumps(answer, indent=2) if args.json else f"re-queued {answer['requeued']} events for upstream")
        return 0
    print(f"{answer['total']} dead letters (events upstream refused); newest first:")
    for item in answer["items"]:
        print(f"  {item['mid']}  {item['eid']}  {item['reason']}")
    return 0


def add_commands(sub: Any) -> None:
    """Add sync, status and dead-letter to the telemetry-hub command."""
    sync = sub.add_parser("sync", help="deliver to upstream now and report the outcome")
    remote_options(sync)
    sync.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the outcome")
    sync.set_defaults(func=_cmd_sync)

    status = sub.add_parser(
        "status",
        help="how the running hub is doing (exit status 1 unless healthy)",
        description="Ask the running hub how it is doing. Exit status: 0 healthy, "
        "1 unhealthy (the reasons are printed) or unreachable.",
    )
    remote_options(status)
    status.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the hub's answer")
    status.set_defaults(func=_cmd_status)

    dead = sub.add_parser("dead-letter", help="list or re-queue events upstream refused")
    dead.add_argument("action", choices=["list", "requeue"])
    dead.add_argument("mids", nargs="*", help="mids to re-queue")
    dead.add_argument("--all", action="store_true", help="re-queue every dead letter")
    dead.add_argument("--limit", type=int, default=100)
    remote_options(dead)
    dead.set_defaults(func=_cmd_dead_letter)
