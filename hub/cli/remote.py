"""Commands that ask a running hub: status, sync, dead-letter."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..words import LINK_TEXT, printable
from .client import error_text
from .common import client_for, remote_options
from .text import format_text

__all__ = ["add_commands"]


def _refusal(client: Any, answer: Any) -> str:
    """Why the hub refused, and how this hub was found when that may be the cause."""
    text = error_text(answer)
    return f"{text} ({client.hint})" if getattr(client, "hint", "") else text


def _cmd_sync(args: argparse.Namespace) -> int:
    client = client_for(args)
    status, answer = client.request("POST", f"/admin/sync?timeout={args.timeout:g}", timeout=args.timeout + 10)
    if status != 200:
        print(f"sync refused ({status}): {_refusal(client, answer)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        link = LINK_TEXT.get(str(answer.get("link")), str(answer.get("link") or ""))
        tail = f"; upstream link {link}" if answer.get("link") else ""
        print(f"delivered {answer['delivered']} events; {answer['backlog']} still waiting{tail}")
        if answer.get("error"):
            print(f"why not everything: {answer['error']}")
    return 0 if answer.get("ok") else 1


def _cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    status, answer = client.request("GET", "/status.json", timeout=args.timeout)
    if status != 200 or not isinstance(answer, dict) or "state" not in answer:
        print(f"status refused ({status}): {_refusal(client, answer)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else format_text(answer, client.url))
    return 0 if answer.get("healthy") else 1


def _cmd_dead_letter(args: argparse.Namespace) -> int:
    answer: Any
    if args.action is None:
        print("say what to do: `dead-letter list`, or `dead-letter requeue MID...` / `--all`", file=sys.stderr)
        return 2
    if args.action == "requeue" and not args.all and not args.mids:
        print("say which: --all, or one or more mids (see `telemetry-hub dead-letter list`)", file=sys.stderr)
        return 2
    client = client_for(args)
    if args.action == "list":
        status, answer = client.request("GET", f"/admin/dead-letters?limit={args.limit}")
    elif args.all:
        status, answer = client.request("POST", "/admin/dead-letters/requeue", {"all": True})
    else:
        status, answer = client.request("POST", "/admin/dead-letters/requeue", {"mids": args.mids})
    if status != 200:
        print(f"refused ({status}): {_refusal(client, answer)}", file=sys.stderr)
        return 1
    if args.action == "requeue":
        n = int(answer["requeued"])
        missing = [str(m) for m in answer.get("missing", [])]
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            print(f"re-queued {n} event{'s' if n != 1 else ''} for upstream")
        if missing:
            shown = ", ".join(printable(m) for m in missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            print(
                f"not a dead letter (already re-queued, or mistyped): {shown}; see `telemetry-hub dead-letter list`",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    total = int(answer["total"])
    print(f"{total} dead letter{'s' if total != 1 else ''} (events upstream refused); newest first:")
    for item in answer["items"]:
        print(f"  {printable(item['mid'])}  {printable(item['eid'])}  {printable(item['reason'])}")
    return 0


def _cmd_login_code(args: argparse.Namespace) -> int:
    client = client_for(args)
    status, answer = client.request("POST", "/admin/login-code")
    if status != 200 or not isinstance(answer, dict) or "code" not in answer:
        print(f"no sign-in code ({status}): {_refusal(client, answer)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    minutes = float(answer["valid_s"]) / 60
    print(f"sign-in code: {answer['code']}")
    print(
        f"Type it on the hub's sign-in page ({client.url}/) in place of the admin token. "
        f"It works once, for {minutes:g} minutes."
    )
    return 0


def add_commands(sub: Any) -> None:
    """Add sync, status and dead-letter to the telemetry-hub command."""
    sync = sub.add_parser(
        "sync",
        help="deliver to upstream now and report the outcome",
        description="Ask the running hub to send everything waiting to the institute's server now, without "
        "waiting for the next retry or upload window. Exit status: 0 when nothing is left waiting, 1 otherwise.",
    )
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

    code = sub.add_parser(
        "login-code",
        help="a short sign-in code for the status page on a phone",
        description="Ask the running hub for a short sign-in code (10 letters and digits) that the status "
        "page's sign-in form takes in place of the 48-character admin token, once, within "
        "auth.login_code_seconds. Run it over SSH on the hub. Example: sudo telemetry-hub login-code",
    )
    remote_options(code)
    code.set_defaults(func=_cmd_login_code)

    dead = sub.add_parser(
        "dead-letter",
        help="list or re-queue events upstream refused",
        description="Dead letters are events the institute's server refused (with its reason). `list` shows "
        "them, newest first; `requeue MID...` (or `--all`) sends them again once the cause is fixed.",
    )
    dead.add_argument("action", nargs="?", choices=["list", "requeue"], help="list, or requeue")
    dead.add_argument("mids", nargs="*", help="for requeue: the mids to send again")
    dead.add_argument("--all", action="store_true", help="re-queue every dead letter")
    dead.add_argument("--limit", type=int, default=100)
    remote_options(dead)
    dead.set_defaults(func=_cmd_dead_letter)
