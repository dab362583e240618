"""A headless Chromium driven over the DevTools protocol, for page tests.

Why the DevTools protocol and not ``--enable-logging=stderr`` plus
``--dump-dom``: stderr mixes the browser's own complaints (no D-Bus in a
container, GPU probing) with the page's console in a format that changes
between versions, and neither flag reports network requests at all.  Over
CDP the page's console calls, uncaught exceptions, log entries and every
request it starts arrive as structured events, and screenshots of any
element come back as PNG.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import websocket

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--hide-scrollbars",
    "--mute-audio",
    "--window-size=1280,900",
    "--remote-debugging-port=0",  # the browser picks a free port and prints it
]

# Schemes a self-contained page may load: itself and what it builds in memory.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium_binary() -> str | None:
    # Debian's /usr/bin/chromium is a shell wrapper that trips over its own
    # tests on some shells; the real binary behind it takes the same flags.
    for cand in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


@dataclass
class PageReport:
    """What one page did while it loaded and rendered."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)

    @property
    def network(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]

    @property
    def errors(self) -> list[str]:
        return self.console_errors + self.exceptions + self.log_errors


class Chromium:
    """One headless browser with one page; ``with Chromium() as b: ...``.

    The browser runs in a session of its own, and ``close`` ends that
    process group (the browser and the renderer/GPU/zygote helpers it
    forked) by the id of the process this class started, nothing else.
    """

    def __init__(self, binary: str, timeout: float = 30.0) -> None:
        self.profile = tempfile.mkdtemp(prefix="vmtrace-chromium-")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.timeout = timeout
        self._id = 0
        self.ws: websocket.WebSocket | None = None
        try:
            port = self._devtools_port()
            page = self._page_target(port)
            # No Origin header: Chromium refuses DevTools sockets from
            # origins it was not told to allow.
            self.ws = websocket.create_connection(page, timeout=timeout, suppress_origin=True)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + self.timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                # Nothing reads stderr from here on: send it nowhere, so a
                # chatty browser cannot fill the pipe and stall.
                self.proc.stderr.close()
                return int(m.group(1))
        raise RuntimeError("chromium did not start its DevTools server:\n" + "".join(seen[-20:]))

    def _page_target(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                for t in json.load(r):
                    if t.get("type") == "page":
                        return str(t["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise RuntimeError("chromium has no page target")

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except OSError:
                pass
            self.ws = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- protocol ------------------------------------------------------------

    def _recv(self, report: PageReport | None, deadline: float) -> dict[str, Any]:
        assert self.ws is not None
        self.ws.settimeout(max(deadline - time.monotonic(), 0.05))
        msg = json.loads(self.ws.recv())
        if report is not None and "method" in msg:
            _record(report, msg)
        return msg

    def call(self, method: str, report: PageReport | None = None, **params: Any) -> dict[str, Any]:
        """Send one command, return its result; events that arrive meanwhile
        go into ``report``."""
        assert self.ws is not None
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv(report, deadline)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str, report: PageReport | None = None) -> Any:
        res = self.call("Runtime.evaluate", report, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def load(self, url: str, ready: str = "true", settle: float = 0.5) -> PageReport:
        """Navigate to ``url``, wait for the load event and then until the
        JavaScript expression ``ready`` is true, keep listening ``settle``
        seconds more (late requests, late errors); returns what happened."""
        report = PageReport()
        self.call("Page.navigate", report, url=url)
        deadline = time.monotonic() + self.timeout
        while True:
            if self._recv(report, deadline).get("method") == "Page.loadEventFired":
                break
        while not self.evaluate(f"Boolean({ready})", report):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never became ready: {ready}")
            time.sleep(0.1)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            try:
                self._recv(report, end)
            except websocket.WebSocketTimeoutException:
                break
        return report

    def screenshot(self, selector: str, index: int = 0) -> bytes:
        """PNG of one element (found with ``querySelectorAll(selector)``),
        scrolled into view, at one device pixel per CSS pixel."""
        rect = self.evaluate(
            f"(() => {{ const e = document.querySelectorAll({json.dumps(selector)})[{index}];"
            " e.scrollIntoView(); const r = e.getBoundingClientRect();"
            " return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height}; })()"
        )
        res = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip={**rect, "scale": 1})
        return base64.b64decode(res["data"])


def _record(report: PageReport, msg: dict[str, Any]) -> None:
    method, p = msg["method"], msg.get("params", {})
    if method == "Network.requestWillBeSent":
        report.requests.append(p["request"]["url"])
    elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        report.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
    elif method == "Runtime.exceptionThrown":
        d = p.get("exceptionDetails", {})
        report.exceptions.append(str(d.get("exception", {}).get("description") or d.get("text")))
    elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
        e = p["entry"]
        report.log_errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}")


def png_stats(png: bytes) -> tuple[tuple[int, int], float, float]:
    """(size, share of pixels unlike the most common colour, share of
    saturated pixels): a blank element scores 0 on both, axes and text
    alone (greys) score on the first only, drawn data on the second."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    colors = im.getcolors(maxcolors=im.width * im.height) or []
    n = im.width * im.height
    top = max(c for c, _ in colors) if colors else n
    # getcolors of an RGB image yields (count, (r, g, b)); PIL's stubs allow a float pixel.
    saturated = sum(c for c, rgb in colors if isinstance(rgb, tuple) and max(rgb[:3]) - min(rgb[:3]) > 40)
    return im.size, 1 - top / n, saturated / n
