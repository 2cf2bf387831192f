"""Throwaway network namespaces joined by veth pairs, so mDNS tests use real multicast in isolation.

Needs root and iproute2. Addresses are IPv4 link-local (169.254/16) and IPv6 ULA (fd00::/8) only,
and everything lives inside namespaces this module creates and always deletes.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "Lab", "NetnsUnavailable", "Proc"]

ROOT = Path(__file__).resolve().parents[2]  # the repository
_counter = itertools.count()


class NetnsUnavailable(Exception):
    """Namespaces cannot be created here; the message says why (tests skip with it)."""


def _run(*args: str) -> str:
    """Run a command, raising with its stderr on failure."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)!r} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


class Proc:
    """A subprocess whose stdout lines are collected by a thread, for waits with deadlines."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.lines.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr.append), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, sink: Callable[[str], None]) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def wait_line(self, pred: Callable[[str], bool], timeout: float) -> str:
        """The next stdout line matching pred, or AssertionError with the process's output."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            self.seen.append(line)
            if pred(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s from {self.args}\n{self.output()}")

    def wait_stderr(self, pred: Callable[[str], bool], timeout: float) -> str:
        """The first stderr line (logs) matching pred, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.stderr):
                if pred(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no matching log line within {timeout}s from {self.args}\n{self.output()}")

    def output(self) -> str:
        """stdout and stderr so far, for failure messages."""
        return "stdout:\n" + "\n".join(self.seen) + "\nstderr:\n" + "\n".join(self.stderr)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signal the process and reap it (kill if it lingers); returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for t in self._threads:
            t.join(timeout=2)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        return self.popen.returncode


class Lab:
    """Namespaces and veths for one test; close() removes them all, even after a failure."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid()}-{next(_counter)}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []

    @staticmethod
    def check() -> None:
        """Raise NetnsUnavailable unless this process can create namespaces."""
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespace tests need root")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("iproute2 ('ip') is not installed")
        name = f"thub-probe-{os.getpid()}"
        try:
            _run("ip", "netns", "add", name)
        except (RuntimeError, OSError) as exc:
            raise NetnsUnavailable(f"cannot create a network namespace: {exc}") from None
        _run("ip", "netns", "del", name)

    def ns(self, label: str) -> str:
        """A new namespace with lo up, IPv6 DAD off (link-local usable at once), secondaries promoted."""
        name = f"thub-{label}-{self.tag}"
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.exec(name, "ip", "link", "set", "lo", "up")
        for conf in ("all", "default"):
            self.exec(name, "sh", "-c", f"echo 0 > /proc/sys/net/ipv6/conf/{conf}/accept_dad")
            # Deleting a primary IPv4 address must not take the secondaries of its subnet with it.
            self.exec(name, "sh", "-c", f"echo 1 > /proc/sys/net/ipv4/conf/{conf}/promote_secondaries")
        return name

    def exec(self, ns: str, *args: str) -> str:
        return _run("ip", "netns", "exec", ns, *args)

    def bridge(self, ns: str, name: str) -> None:
        """A bridge standing in for the LAN switch; snooping off, as on a cheap unmanaged switch."""
        self.exec(ns, "ip", "link", "add", name, "type", "bridge", "mcast_snooping", "0")
        self.exec(ns, "ip", "link", "set", name, "up")
        self.exec(ns, "ip", "route", "add", "224.0.0.0/4", "dev", name)

    def link(
        self, ns_a: str, if_a: str, ns_b: str, if_b: str, *, linklocal_a: bool = True, bridge_b: str | None = None
    ) -> None:
        """Join two namespaces with a veth pair, if_b optionally a port of a bridge in ns_b.

        linklocal_a=False keeps if_a free of any address, even the kernel's fe80::.
        """
        _run("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        if not linklocal_a:
            self.exec(ns_a, "ip", "link", "set", if_a, "addrgenmode", "none")
        if bridge_b:
            self.exec(ns_b, "ip", "link", "set", if_b, "addrgenmode", "none")
            self.exec(ns_b, "ip", "link", "set", if_b, "master", bridge_b)
        for ns, ifname, routed in ((ns_a, if_a, True), (ns_b, if_b, not bridge_b)):
            self.exec(ns, "ip", "link", "set", ifname, "up")
            if routed:
                self.exec(ns, "ip", "route", "add", "224.0.0.0/4", "dev", ifname)

    def addr(self, ns: str, ifname: str, cidr: str, *, delete: bool = False) -> None:
        """Add (or delete) an address; IPv6 ones skip DAD."""
        verb = "del" if delete else "add"
        extra = ["nodad"] if ":" in cidr and not delete else []
        self.exec(ns, "ip", "addr", verb, cidr, "dev", ifname, *extra)

    def linklocal6(self, ns: str, ifname: str, timeout: float = 5.0) -> str:
        """The kernel-made fe80:: address of an interface, once it is usable."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.exec(ns, "ip", "-j", "-6", "addr", "show", "dev", ifname, "scope", "link")
            for iface in json.loads(out or "[]"):
                for a in iface.get("addr_info", []):
                    if "local" in a and not a.get("tentative"):
                        return str(a["local"])
            time.sleep(0.05)
        raise AssertionError(f"{ifname} in {ns} got no usable link-local address within {timeout}s")

    def spawn(self, ns: str, *args: str) -> Proc:
        """Run `python -m hub.cli.mdns ARGS` inside a namespace."""
        proc = Proc(["ip", "netns", "exec", ns, sys.executable, "-m", "hub.cli.mdns", *args])
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop every process and delete every namespace (veths go with them)."""
        for proc in self.procs:
            proc.stop(signal.SIGKILL)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
