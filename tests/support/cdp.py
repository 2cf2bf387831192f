"""A small Chrome DevTools Protocol client: headless Chromium driven over its websocket (aiohttp), no selenium.

    browser = await Browser.launch(tmp_path / "chromium")
    try:
        await browser.goto(url)
        await browser.set_files("input[type=file]", [path])
        await browser.click("button[type=submit]")
        await browser.wait_for("document.querySelector('h1') !== null")
        text = await browser.eval("document.body.innerText")
        await browser.screenshot(tmp_path / "page.png")
    finally:
        await browser.close()

`chromium_or_skip()` finds the browser; a missing one skips the test, except under CI (CI=true) where it fails.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

__all__ = ["Browser", "CDPError", "chromium_or_skip"]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MiB; Chromium then crashes on big pages
    "--no-default-browser-check",
    "--mute-audio",
)
_START_TIMEOUT_S = 20.0
_POLL_S = 0.05


class CDPError(Exception):
    """Chromium answered a command with an error, or a page script threw."""


def chromium_or_skip() -> str:
    """Path of a Chromium binary; skip the test when there is none (fail under CI, where it must be installed)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    reason = "chromium is not installed (apt-get install -y chromium); this test drives a real browser"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class Browser:
    """One headless Chromium with one page (tab), driven through a flattened CDP session."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        user_dir: Path,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
    ) -> None:
        self.proc = proc
        self.user_dir = user_dir
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._event_added = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")
        self.session: str | None = None
        self.target: str | None = None

    @classmethod
    async def launch(
        cls,
        user_dir: Path,
        *,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        width: int = 1024,
        height: int = 768,
        mobile: bool = False,
    ) -> Browser:
        """Start Chromium with a fresh profile in user_dir and open one blank page (mobile: a phone's viewport)."""
        binary = binary or chromium_or_skip()
        user_dir = Path(user_dir)
        user_dir.mkdir(parents=True, exist_ok=True)
        port_file = user_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        log = open(user_dir.parent / f"{user_dir.name}.log", "ab")
        args = [
            binary,
            *FLAGS,
            f"--user-data-dir={user_dir}",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            *extra_args,
            "about:blank",
        ]
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        try:
            ws_path = await cls._wait_port_file(proc, port_file)
            http = aiohttp.ClientSession()
            try:
                ws = await http.ws_connect(ws_path, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5))
            except BaseException:
                await http.close()
                raise
        except BaseException:
            _kill(proc)
            raise
        browser = cls(proc, user_dir, http, ws)
        try:
            await browser._open_page(width, height, mobile)
        except BaseException:
            await browser.close()
            raise
        return browser

    @staticmethod
    async def _wait_port_file(proc: subprocess.Popen[bytes], port_file: Path) -> str:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"chromium exited with {proc.returncode} before it listened; "
                    f"see {port_file.parent.parent / (port_file.parent.name + '.log')}"
                )
            try:
                lines = port_file.read_text().split()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 2:  # "<port>\n/devtools/browser/<id>"
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            await asyncio.sleep(_POLL_S)
        raise RuntimeError(f"chromium did not write {port_file} within {_START_TIMEOUT_S:.0f} s")

    async def _open_page(self, width: int, height: int, mobile: bool) -> None:
        created = await self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        self.target = created["targetId"]
        attached = await self.send("Target.attachToTarget", {"targetId": self.target, "flatten": True}, session=False)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "DOM"):
            await self.send(f"{domain}.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    # ---- protocol ----------------------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    fut = self._waiting.pop(data["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(data)
                elif "method" in data:
                    self._events.append((data["method"], data.get("params", {})))
                    self._event_added.set()
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(CDPError("the browser connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = True, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send one CDP command (to the page session unless session=False) and return its result."""
        msg: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg["id"]] = fut
        await self._ws.send_str(json.dumps(msg))
        answer = await asyncio.wait_for(fut, timeout)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error'].get('message')} {answer['error'].get('data', '')}".strip())
        return answer.get("result", {})

    async def wait_event(self, method: str, timeout: float = 15.0, *, since: int = 0) -> dict[str, Any]:
        """Wait for a CDP event by name (among those after index `since`) and return its params."""
        deadline = time.monotonic() + timeout
        while True:
            for name, params in self._events[since:]:
                if name == method:
                    return params
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event within {timeout} s")
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), left)
            except TimeoutError:
                pass

    # ---- page actions -----------------------------------------------------------------------------------------

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        """Navigate and wait for the load event."""
        mark = len(self._events)
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"cannot open {url}: {result['errorText']}")
        await self.wait_event("Page.loadEventFired", timeout, since=mark)

    async def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return the value as JSON."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"script failed: {text}")
        return result.get("result", {}).get("value")

    async def _node(self, selector: str) -> int:
        root = await self.send("DOM.getDocument", {"depth": 0})
        found = await self.send("DOM.querySelector", {"nodeId": root["root"]["nodeId"], "selector": selector})
        if not found.get("nodeId"):
            raise CDPError(f"no element matches {selector!r}")
        return int(found["nodeId"])

    async def set_files(self, selector: str, paths: Sequence[Path | str]) -> None:
        """Choose files in an <input type=file>, as a user picking them would."""
        node = await self._node(selector)
        await self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(Path(p).resolve()) for p in paths]})

    async def fill(self, selector: str, value: str) -> None:
        """Type a value into an input (focus it, then insert the text as keyboard input would)."""
        await self.eval(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.focus(); el.value = ''; }})()"
        )
        await self.send("Input.insertText", {"text": value})

    async def click(self, selector: str) -> None:
        """Click the centre of the element with real mouse events (so what a person cannot click fails)."""
        box = await self.eval(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el) return null; el.scrollIntoView({block: 'center'});"
            " const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise CDPError(f"no element matches {selector!r}")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            )

    async def wait_for(self, condition: str, timeout: float = 15.0) -> Any:
        """Poll a JavaScript expression until it is truthy (navigations in between are fine); return its value."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = await self.eval(condition)
                if value:
                    return value
            except CDPError as exc:  # e.g. the context was destroyed by a navigation
                last = exc
            await asyncio.sleep(_POLL_S)
        raise TimeoutError(f"{condition!r} not true within {timeout} s" + (f" (last error: {last})" if last else ""))

    async def screenshot(self, path: Path | str, *, full_page: bool = True) -> Path:
        """Save a PNG of the page."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = await self.send("Page.captureScreenshot", params)
        path = Path(path)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        """Close the browser and wait for its process to end (idempotent)."""
        if not self._ws.closed:
            try:
                await self.send("Browser.close", session=False, timeout=5)
            except (CDPError, TimeoutError, ConnectionError, aiohttp.ClientError):
                pass
            await self._ws.close()
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass
        await self._http.close()
        await asyncio.to_thread(_wait_or_kill, self.proc)


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of Chromium's process group (its own session: helpers such as crashpad go too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
