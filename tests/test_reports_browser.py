"""Every generated HTML page in a real browser (Debian's headless Chromium, driven over the DevTools protocol).

Each page is opened from disk with the network switched off: no console error, no request other than the page itself
and inline data, every image rendered, and no script from the data executed (the kitchen-sink data names a column and
its values with scripts that would set `document.title` and `window.__pwned`). A screenshot of every page is saved
under the test's output folder for review. A positive control proves the harness sees a script that runs and an
external request.
"""
import base64, itertools, json, os, shutil, signal, subprocess, tempfile, time
from pathlib import Path

import pytest

from hostile import EXTERNAL_URL, XSS, XSS_VALUES, kitchen_sink_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
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

    def open(self, path: Path, screenshot: Path | None = None) -> dict:
        "Open a local file in a new tab; return what happened: title, flags, images, requests, errors, dialogs, text."
        session = self.new_page()
        self.events = [m for m in self.events if m.get("sessionId") != session]
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired", session)
        self.evaluate(session, "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
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
        if screenshot is not None: self.screenshot(session, screenshot)
        self.send("Target.closeTarget", {"targetId": self.send("Target.getTargetInfo", session=session)["targetInfo"]["targetId"]})
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


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    return kitchen_sink_run(tmp_path_factory)


def _problems(state: dict, page: Path) -> list[str]:
    "What a page must never do: run data scripts, request anything but itself and inline data, log errors, show broken images."
    out = []
    if state["pwned"] is not None or "pwned" in state["title"] or state["dialogs"]:
        out.append(f"a script from the data ran: __pwned={state['pwned']!r}, title={state['title']!r}, dialogs={state['dialogs']}")
    external = [u for u in state["requests"] if not u.startswith(("data:", page.resolve().as_uri()))]
    if external: out.append(f"requests other than the page itself and inline data: {external[:5]}")
    if state["errors"]: out.append(f"console errors: {state['errors'][:5]}")
    broken = [i for i in state["images"] if not i["complete"] or i["width"] == 0]
    if broken: out.append(f"images not rendered: {broken[:3]}")
    return out


def test_the_harness_sees_a_script_that_runs_and_an_external_request(browser, tmp_path):
    "Positive control: unescaped data in a page is caught (the checks below would otherwise prove nothing)."
    page = tmp_path / "unsafe.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>unsafe</title></head><body>{XSS}{XSS_VALUES[0]}"
                    f'<img src="{EXTERNAL_URL}"><img src="data:image/png;base64,iVBORw0KGgo="></body></html>', encoding="utf-8")
    state = browser.open(page)
    problems = " | ".join(_problems(state, page))
    assert "a script from the data ran" in problems and state["pwned"] in (1, 2) and state["title"] == "pwned"
    assert EXTERNAL_URL in problems and "images not rendered" in problems


def _pages(kitchen: dict) -> dict[str, Path]:
    run_dir, reports = kitchen["run_dir"], kitchen["reports"]
    pages = {f"stage {s}": run_dir / v["html"] for s, v in kitchen["summary"]["stages"].items() if v.get("html")}
    pages.update({"run index": run_dir / "index.html", "dashboard": reports / "index.html", "model card": run_dir / "model_card.html",
                  "monitoring batch": reports / "monitoring" / "hostile-batch" / "monitoring.html"})
    pages.update({f"stage monitoring: {p.parent.name}": p for p in sorted((run_dir / "monitoring").glob("*/monitoring.html"))[:1]})
    return pages


def test_every_report_is_safe_offline_and_complete(kitchen, browser, tmp_path):
    "Each report of the kitchen-sink run, the run index, the dashboard and a monitoring page, opened from disk, offline."
    assert kitchen["proc"].returncode in (0, 3), kitchen["proc"].stderr  # 3: gates failed, a correct outcome
    assert kitchen["monitor"].returncode == 0, kitchen["monitor"].stderr
    pages = _pages(kitchen)
    assert len(pages) >= 8 and all(p.is_file() for p in pages.values()), {k: p.is_file() for k, p in pages.items()}
    shots, failures, seen = tmp_path / "screenshots", {}, {}
    for name, page in pages.items():
        state = browser.open(page, shots / f"{name.replace(' ', '_').replace(':', '')}.png")
        problems = _problems(state, page)
        if problems: failures[name] = problems
        seen[name] = state
    print(f"screenshots for review: {shots}")
    assert not failures, failures
    assert all((shots / f"{n.replace(' ', '_').replace(':', '')}.png").stat().st_size > 10_000 for n in pages)
    # the hostile strings are shown as text (escaped), not dropped: in the data report, the rai report and the run index
    for name in ("stage eda", "stage rai", "stage evaluation", "run index", "monitoring batch"):
        assert XSS in seen[name]["text"], f"{name}: the hostile column name is not shown as text"
    assert XSS_VALUES[0] in seen["stage eda"]["text"] and XSS in seen["model card"]["text"]
    for name in ("stage eda", "stage rai", "stage baseline", "stage evaluation", "dashboard"):
        assert len(seen[name]["images"]) >= 1, f"{name}: no plot"
    assert seen["stage eda"]["title"] == "arrests: eda" and seen["run index"]["title"].startswith("Run ")
    assert all(s["scripts"] == 0 for s in seen.values()), {n: s["scripts"] for n, s in seen.items()}  # reports need no script at all


def test_reports_escape_user_strings_in_every_output_kind(kitchen):
    "Markdown, HTML and table outputs: the raw hostile strings never reach any HTML file, their escaped forms do."
    raw = [XSS, XSS_VALUES[0], f'<img src="{EXTERNAL_URL}">', "<b>bold</b>", "<i>y</i>"]
    for page in _pages(kitchen).values():
        html = page.read_text(encoding="utf-8")
        leaked = [r for r in raw if r in html]
        assert not leaked, f"{page.name}: unescaped {leaked}"
        assert "<script" not in html.lower(), page.name
    eda = (kitchen["run_dir"] / "eda.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;document.title=" in eda.replace("&#39;", "'").replace("&#x27;", "'")
