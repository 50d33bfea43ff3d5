"""`make lab` serves the notebooks: JupyterLab started headless with the Makefile's own command (127.0.0.1, a free port,
a token) lists them through its REST API and runs a stage notebook in a kernel it starts, cell by cell over the
kernel's websocket, with every step bounded in time."""
import json, os, re, secrets, signal, socket, subprocess, sys, time, urllib.error, urllib.request, uuid
from pathlib import Path

import nbformat
import pytest


from conftest import free_port, NBS, REPO
from mlops_nb.pipeline import STAGES


def _lab_command() -> list[str]:
    "The `lab` recipe of the Makefile, with `$(BIN)` resolved to this virtual environment."
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lab:.*\n\t(.+)$", text, flags=re.M).group(1)
    assert "--ip 127.0.0.1" in recipe, f"make lab must listen on 127.0.0.1 only: {recipe}"
    return recipe.replace("$(BIN)", str(Path(sys.executable).parent)).replace("$(LAB_ROOT)", "").split()




class Lab:
    "A JupyterLab server of our own (own process group, runtime and config folders), spoken to over HTTP and websockets."

    def __init__(self, tmp: Path, timeout: float = 90):
        self.port, self.token = free_port(), secrets.token_hex(16)
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
               "JUPYTER_DATA_DIR": str(tmp / "data"), "MLOPS_NB_NOTEBOOKS": str(NBS)}
        args = [f"--port={self.port}", "--no-browser", f"--IdentityProvider.token={self.token}", "--ServerApp.port_retries=0",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None",
                "--LabApp.extension_manager=readonly"] + ["--allow-root"] * (os.geteuid() == 0)  # CI runs as root
        self.log = open(tmp / "lab.log", "w")
        self.proc = subprocess.Popen(_lab_command() + args, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/api/status"); break
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop(); raise RuntimeError(f"JupyterLab did not start: {(tmp / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def get(self, path: str): return self.request("GET", path)

    def execute(self, kernel_id: str, cells: list[str], cell_timeout: float = 180) -> list[dict]:
        "Run code cells in order on a server-started kernel; per cell: status, outputs (types), error."
        import websocket
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}",
                                         timeout=cell_timeout)
        session, results = uuid.uuid4().hex, []
        try:
            for code in cells:
                msg_id = uuid.uuid4().hex
                ws.send(json.dumps({"header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request",
                                               "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                                    "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                                "allow_stdin": False, "stop_on_error": True}}))
                result, deadline = {"outputs": [], "status": None, "error": None, "text": ""}, time.monotonic() + cell_timeout
                while result["status"] is None or not result.get("idle"):
                    if time.monotonic() > deadline: raise TimeoutError(f"cell did not finish in {cell_timeout} s: {code[:200]}")
                    msg = json.loads(ws.recv())
                    if msg.get("parent_header", {}).get("msg_id") != msg_id: continue
                    kind = msg["msg_type"]
                    if kind == "execute_reply": result["status"] = msg["content"]["status"]
                    elif kind == "status" and msg["content"]["execution_state"] == "idle": result["idle"] = True
                    elif kind in ("display_data", "execute_result", "stream", "error"):
                        result["outputs"].append(kind if kind != "display_data" else "image" if "image/png" in msg["content"]["data"] else kind)
                        if kind == "error": result["error"] = f"{msg['content']['ename']}: {msg['content']['evalue']}"
                        if kind == "stream": result["text"] += msg["content"]["text"]
                results.append(result)
                if result["status"] != "ok": break
        finally:
            ws.close()
        return results

    def stop(self) -> None:
        if self.proc.poll() is None:
            try: self.request("POST", "/api/shutdown", timeout=10)
            except (urllib.error.URLError, OSError): pass
            try: self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = Lab(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()


def test_lab_lists_the_notebooks(lab):
    listing = lab.get("/api/contents/")
    notebooks = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
    assert set(STAGES.values()) | {"00_core.ipynb", "07_pipeline.ipynb", "08_cli.ipynb", "index.ipynb"} <= notebooks, notebooks
    nb = lab.get("/api/contents/01_eda.ipynb?content=1")
    assert nb["type"] == "notebook" and nb["format"] == "json"
    tagged = [c for c in nb["content"]["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and "RUN_DIR" in "".join(tagged[0]["source"])


def test_lab_runs_a_stage_notebook_in_its_own_kernel(lab):
    "01_eda with its defaults (the quick run on the built-in data), every code cell in a kernel the server started, then the kernel is stopped."
    session = lab.request("POST", "/api/sessions", {"path": "01_eda.ipynb", "type": "notebook", "name": "01_eda.ipynb",
                                                    "kernel": {"name": "python3"}})
    kernel_id = session["kernel"]["id"]
    try:
        assert kernel_id in {k["id"] for k in lab.get("/api/kernels")}
        cells = [c.source for c in nbformat.read(NBS / "01_eda.ipynb", as_version=4).cells if c.cell_type == "code" and c.source.strip()]
        t0 = time.monotonic()
        results = lab.execute(kernel_id, cells)
        failed = [(i, r["error"]) for i, r in enumerate(results) if r["status"] != "ok"]
        assert not failed and len(results) == len(cells), failed
        assert sum(r["outputs"].count("image") for r in results) >= 2  # the profile and association plots were drawn
        assert time.monotonic() - t0 < 300
        check = lab.execute(kernel_id, ["import json; print(json.dumps({'rows': len(data), 'stage': json.load(open(ctx.path('eda.json')))['stage']}))"])
        assert check[0]["status"] == "ok" and json.loads(check[0]["text"]) == {"rows": 5226, "stage": "eda"}
    finally:
        lab.request("DELETE", f"/api/sessions/{session['id']}")
    assert kernel_id not in {k["id"] for k in lab.get("/api/kernels")}
