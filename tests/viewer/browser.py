"""Headless Chromium driven over the DevTools protocol on a pipe, with the standard library only.

``--remote-debugging-pipe`` makes Chromium read protocol commands from its fd 3 and write
replies and events to its fd 4, each message a JSON object ended by a NUL byte. That needs no
port, no websocket client and no extra package: the test talks to the real browser that
``scripts/setup-system.sh`` installs from Debian. One ``Browser`` is one Chromium process with a
fresh profile; ``open_page`` loads a URL in a new tab and records everything the page logs.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Browser", "BrowserError", "ConsoleEntry", "Page", "chromium_path"]

#: Flags that let Chromium run as root in a container without a display, a GPU, a session bus or
#: any of its background traffic (updates, sync, QUIC probes); found by trial on this machine.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

#: A page of this viewer loads in well under a second; a minute means something is stuck.
TIMEOUT = 60.0


class BrowserError(Exception):
    """Chromium failed to start, answered a command with an error, or went silent."""


def chromium_path() -> str | None:
    """The Chromium executable (Debian: ``/usr/bin/chromium``), or ``None``."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class ConsoleEntry:
    """One thing the page logged: a console call, an uncaught exception or a browser log entry."""

    source: str
    level: str
    text: str


@dataclass
class Page:
    """A tab of a ``Browser``: evaluate JavaScript in it, take screenshots, read its log."""

    browser: Browser
    session: str
    console: list[ConsoleEntry] = field(default_factory=list)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (JSON-serializable), awaiting it if it is a promise."""
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} raised: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, width: int, height: int) -> bytes:
        """A PNG of the top ``width`` x ``height`` pixels of the page."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return base64.b64decode(data)

    def errors(self) -> list[ConsoleEntry]:
        """What the page logged at error or warning level (including CSP violations)."""
        return [entry for entry in self.console if entry.level in ("error", "warning")]


class Browser:
    """One headless Chromium; use ``Browser.launch()`` as a context manager."""

    def __init__(self, process: subprocess.Popen[bytes], commands: int, replies: int) -> None:
        self._process = process
        self._commands = commands
        self._replies = replies
        self._buffer = b""
        self._next_id = 0
        self._pages: dict[str, Page] = {}

    @classmethod
    @contextmanager
    def launch(cls, executable: str) -> Iterator[Browser]:
        """Start Chromium with a throw-away profile; stop it and delete the profile at the end."""
        profile = tempfile.mkdtemp(prefix="rlm-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def place_pipes() -> None:
            # In the child, before exec: the protocol's fixed descriptors 3 and 4.
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=place_pipes,
            pass_fds=(3, 4),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        browser = cls(process, to_browser_w, from_browser_r)
        try:
            yield browser
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            shutil.rmtree(profile, ignore_errors=True)

    # --- the protocol ---------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its reply; events that arrive meanwhile are recorded."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def wait_for(self, method: str, session: str) -> dict[str, Any]:
        """Wait for the event ``method`` of tab ``session``."""
        while True:
            message = self._receive()
            if message.get("method") == method and message.get("sessionId") == session:
                params: dict[str, Any] = message.get("params", {})
                return params

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"no message from Chromium in {TIMEOUT} s")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe (exit status {self._process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        self._record(message)
        return message

    def _record(self, message: dict[str, Any]) -> None:
        page = self._pages.get(message.get("sessionId", ""))
        if page is None:
            return
        params = message.get("params", {})
        match message.get("method"):
            case "Runtime.consoleAPICalled":
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
                level = {"warning": "warning", "error": "error", "assert": "error"}.get(params["type"], "info")
                page.console.append(ConsoleEntry("console", level, text))
            case "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text", "")
                page.console.append(ConsoleEntry("exception", "error", text))
            case "Log.entryAdded":
                entry = params["entry"]
                page.console.append(ConsoleEntry(entry.get("source", "log"), entry.get("level", "info"), entry.get("text", "")))
            case _:
                pass

    # --- tabs -----------------------------------------------------------------------------

    def open_page(self, url: str) -> Page:
        """A new tab that has loaded ``url`` (its load event fired), logging from the start."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Runtime", "Log", "Page"):
            page.send(f"{domain}.enable")
        page.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", session)
        return page
