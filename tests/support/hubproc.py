"""Run the real hub as a subprocess (`python -m hub run`), for crash, kill -9 and fuzz tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    """A hub subprocess on 127.0.0.1 with its own data dir; restartable on the same port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        config: Path | None = None,
        extra: list[str] | None = None,
        env: dict[str, str | None] | None = None,
        discovery: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        # mDNS stays off unless a test asks for it: tests must not announce themselves on a real LAN.
        self.extra = (extra or []) + ([] if discovery else ["--no-discovery"])
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"hub-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The `python -m hub run` command line this hub runs."""
        args = [sys.executable, "-m", "hub"]
        if self.config:
            args += ["--config", str(self.config)]
        return args + [
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
        ]

    def environment(self) -> dict[str, str]:
        """os.environ plus the test's variables; a variable given as None is removed."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        return {k: v for k, v in env.items() if v is not None}

    def run_to_exit(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run in the foreground until it exits (for hubs that must refuse to start); output as text."""
        return subprocess.run(self.command(), capture_output=True, text=True, timeout=timeout, env=self.environment())

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until /health answers."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment())
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status in (200, 503):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"hub did not answer /health within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """kill -9: no chance to flush or clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a graceful exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def __enter__(self) -> HubProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
