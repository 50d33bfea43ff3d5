"""Headless Chromium (Debian's package) driven over the DevTools protocol, for the tests that open generated pages.

Not a test module: tests/test_reports_browser.py (the run reports) and tests/test_docs_site.py (the documentation
site) import it. Pages are opened from disk in tabs with the network switched off; `Chromium.open` returns what the
page did (requests, console errors, dialogs, images, text) so that a test can assert on it.
"""
import base64, itertools, json, os, shutil, signal, subprocess, tempfile, time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# A test module that uses the browser starts with `pytestmark = needs_chromium`.
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                                               "`make test` installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-port=0", "--window-size=1280,900"]


class Chromium:
    "Headless Chromium and one DevTools websocket; pages are opened in flat sessions of that socket."

    def __init__(self, workdir: Path, timeout: float = 30):
        import websocket
        self.timeout, self.profile = timeout, Path(tempfile.mkdtemp(prefix="chromium-", dir=workdir))
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        port_file, deadline = self.profile / "DevToolsActivePort", time.monotonic() + timeout
        while not (port_file.exists() and len(port_file.read_text().split()) == 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close(); raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        port, path = port_file.read_text().split()
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True)
        self.ids, self.events = itertools.count(1), []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        "Call a DevTools method and wait for its answer; events arriving meanwhile are kept in `self.events`."
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)
        raise TimeoutError(f"{method}: no answer in {self.timeout} s")

    def _event(self, msg: dict) -> None:
        self.events.append(msg)
        if msg.get("method") == "Page.javascriptDialogOpening":  # an alert() would block the page: record it, dismiss it
            self.ws.send(json.dumps({"id": next(self.ids), "method": "Page.handleJavaScriptDialog", "params": {"accept": False},
                                     "sessionId": msg["sessionId"]}))

    def wait_for(self, method: str, session: str, timeout: float | None = None) -> dict:
        "Wait for an event of this session (looking first at those already received)."
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for m in self.events:
                if m.get("method") == method and m.get("sessionId") == session: return m
            if time.monotonic() > deadline: raise TimeoutError(f"no {method} in {timeout or self.timeout} s")
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try: self._event(json.loads(self.ws.recv()))
            finally: self.ws.settimeout(self.timeout)

    def new_page(self) -> str:
        "A fresh tab with the network off; returns its session id."
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"): self.send(f"{domain}.enable", session=session)
        self.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
                  session=session)
        return session

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=session)
        if "exceptionDetails" in result: raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def visit(self, url: str) -> str:
        "Open a URL (a local file's `file://` URI) in a new offline tab and wait for its load event; return the session."
        session = self.new_page()
        self.events = [m for m in self.events if m.get("sessionId") != session]
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        self.evaluate(session, "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
        return session

    def page_state(self, session: str) -> dict:
        "What happened in a tab so far: title, flags, images, scripts, text, requests, errors, dialogs."
        state = self.evaluate(session, """({title: document.title, pwned: typeof window.__pwned === 'undefined' ? null : window.__pwned,
            images: Array.from(document.images).map(i => ({src: i.src.slice(0, 60), complete: i.complete, width: i.naturalWidth})),
            scripts: document.scripts.length, text: document.body.innerText})""")
        mine = [m for m in self.events if m.get("sessionId") == session]
        state["requests"] = [m["params"]["request"]["url"] for m in mine if m["method"] == "Network.requestWillBeSent"]
        state["errors"] = ([m["params"]["exceptionDetails"].get("text", "") + " " + str(m["params"]["exceptionDetails"].get("exception", {}).get("description", ""))
                            for m in mine if m["method"] == "Runtime.exceptionThrown"]
                           + [" ".join(str(a.get("value", a.get("description", ""))) for a in m["params"]["args"])
                              for m in mine if m["method"] == "Runtime.consoleAPICalled" and m["params"]["type"] in ("error", "assert")]
                           + [m["params"]["entry"]["text"] + " " + m["params"]["entry"].get("url", "")
                              for m in mine if m["method"] == "Log.entryAdded" and m["params"]["entry"]["level"] == "error"])
        state["dialogs"] = [m["params"]["message"] for m in mine if m["method"] == "Page.javascriptDialogOpening"]
        return state

    def close_page(self, session: str) -> None:
        self.send("Target.closeTarget", {"targetId": self.send("Target.getTargetInfo", session=session)["targetInfo"]["targetId"]})

    def open(self, path: Path, screenshot: Path | None = None) -> dict:
        "Open a local file in a new tab; return what happened: title, flags, images, requests, errors, dialogs, text."
        session = self.visit(path.resolve().as_uri())
        state = self.page_state(session)
        if screenshot is not None: self.screenshot(session, screenshot)
        self.close_page(session)
        return state

    def screenshot(self, session: str, path: Path, max_height: int = 12000) -> None:
        "A full-page PNG (up to `max_height` CSS pixels tall)."
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": min(size["width"], 1600), "height": min(size["height"], max_height), "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}, session=session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None: self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the launcher script and its children: our own process group
            try: self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Chromium(tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


