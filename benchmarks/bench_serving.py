"""Serving: `mlops-nb serve` (ours, adaptive micro-batching) vs `mlflow models serve` (--env-manager local), the same
registered model and worker count, both on 127.0.0.1, loaded with `wrk` back to back: 1 row at concurrency 1 and 16,
1,000 rows at concurrency 4 (30 s a case; --duration). Also start time to the first /ping 200, the in-process
predict_proba time, errors, and whether our inference log holds every scored row. Writes results/serving.json.

wrk and the servers share the machine's cores: both services pay that equally, the absolute figures are low.
"""
from __future__ import annotations

import json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, parser, python, run_worker, write_result  # noqa: E402
from bench_pipeline import CLI, PY_SPY  # noqa: E402

BIN = Path(sys.executable).parent
TARGETS = {"c16_throughput_vs_mlflow": 5, "c16_p99_ms": 50, "c1_p50_vs_in_process": 1.3, "rows1000_vs_mlflow": 2,
           "start_to_ping_seconds": 3, "errors": 0}
CASES = (("1 row, concurrency 1", 1, 1), ("1 row, concurrency 16", 1, 16), ("1,000 rows, concurrency 4", 1000, 4))
DONE_LUA = r"""
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n', summary.requests,
    summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def serve_available() -> str | None:
    "None when `mlops-nb serve` exists, else why the comparison is skipped."
    out = subprocess.run([CLI, "--help"], capture_output=True, text=True).stdout
    return None if " serve " in out or "│ serve" in out else "`mlops-nb serve` is not in `mlops-nb --help` yet"


def start(argv: list, port: int, cwd: Path, env: dict, timeout: float = 120) -> tuple[subprocess.Popen, float]:
    "Start a server in its own process group; seconds from start until GET /ping answers 200."
    log = open(cwd / f"server-{port}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    while time.perf_counter() - t0 < timeout:  # bounded
        if proc.poll() is not None: raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {(cwd / f'server-{port}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                if r.status == 200: return proc, time.perf_counter() - t0
        except OSError: pass
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{argv[:3]}: no /ping 200 within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    "Stop a server we started: its process group (it was started as the group's leader), then wait."
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(15)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def body(rows: list[dict], columns: list[str]) -> str:
    return json.dumps({"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}})


def wrk(url: str, payload: str, connections: int, seconds: float, folder: Path) -> dict:
    "One wrk case: POST `payload` as JSON; requests, errors and latency percentiles (ms)."
    script = folder / f"wrk-{connections}-{len(payload)}.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{payload}]==]\n{DONE_LUA}')
    threads = min(connections, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", script, url],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None: raise RuntimeError(f"wrk gave no summary: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "seconds": secs, "requests_per_second": r["requests"] / secs,
            "errors": r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"],
            "errors_by_kind": {k: r[k] for k in ("connect", "read", "write", "status", "timeout")},
            **{k.replace("_us", "_ms"): r[k] / 1000 for k in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us")}}


def profile_summary(raw: Path) -> dict:
    "py-spy raw stacks of a server -> share of samples per package (innermost frame) and per innermost mlops_nb function."
    import re
    from collections import Counter
    packages, ours, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit(): continue
        n, frames = int(n), stack.split(";")
        total += n
        last = frames[-1]
        m = (re.search(r"site-packages/([A-Za-z0-9_]+)", last) or re.search(r"/(mlops_nb)/", last)
             or re.search(r"/lib/python3\.\d+/([A-Za-z0-9_]+)", last))
        name = m.group(1) if m else "?"
        packages[name if "site-packages/" in last or name == "mlops_nb" or not m else f"stdlib {name}"] += n
        mine = [f for f in frames if "/mlops_nb/" in f]
        if mine: ours[mine[-1].split(" (")[0]] += n
    share = lambda c: {k: round(v / max(total, 1), 3) for k, v in c.most_common(12)}
    return {"samples": total, "innermost_package": share(packages), "innermost_mlops_nb_function": share(ours)}


def load_cases(url: str, rows: list[dict], columns: list[str], seconds: float, folder: Path, profile_pid: int | None = None) -> list[dict]:
    out = []
    for name, n, c in CASES:
        payload = body([rows[i % len(rows)] for i in range(n)], columns)
        urllib.request.urlopen(urllib.request.Request(url, payload.encode(), {"Content-Type": "application/json"}), timeout=30).read()  # warm
        spy = None
        if profile_pid and PY_SPY.exists():  # sample the server while wrk loads it (no pausing: --nonblocking)
            raw = folder / f"serve-profile-{c}-{n}.txt"
            spy = subprocess.Popen([PY_SPY, "record", "--pid", str(profile_pid), "--duration", str(int(seconds)), "--rate", "200", "--nonblocking",
                                    "--full-filenames", "--format", "raw", "-o", raw], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = wrk(url, payload, c, seconds, folder)
        prof = None
        if spy is not None:
            spy.wait(timeout=seconds + 60)
            prof = profile_summary(raw) if raw.exists() else None
        out.append({"case": name, "rows_per_request": n, "concurrency": c, **r, "rows_per_second": r["requests_per_second"] * n,
                    **({"profile": prof} if prof else {})})
    return out


def log_rows(folder: Path) -> int:
    "Rows in every .jsonl inference log under `folder`."
    return sum(sum(1 for _ in open(p, encoding="utf-8")) for p in folder.rglob("*.jsonl"))


def main(argv=None) -> Path:
    p = parser(__doc__)
    p.add_argument("--duration", type=float, default=30, help="seconds per wrk case")
    p.add_argument("--workers", type=int, default=1, help="mlflow's workers (ours serves from one process)")
    p.add_argument("--profile", action="store_true", help="sample our server with py-spy during each case (a separate pass after the measured one)")
    a = p.parse_args(argv)
    seconds = 1 if a.smoke else a.duration
    if shutil.which("wrk") is None: raise SystemExit("wrk is not installed (apt-get install -y wrk; `make bench` does it)")
    skipped = serve_available()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        cfg = tmp / "config.yaml"
        cfg.write_text("tracking:\n  uri: sqlite:///mlruns.db\n")
        if a.smoke:  # a quick logistic regression registered as the evaluation stage does
            run_worker([python(), HERE / "serving_worker.py", "register", cfg, tmp / "run"])
        else:  # the model the pipeline chooses and registers
            run = subprocess.run([CLI, "run", "--config", cfg, "--out", tmp / "reports"], cwd=tmp, capture_output=True, text=True, timeout=1800)
            if run.returncode not in (0, 3): raise RuntimeError(f"mlops-nb run failed: {run.stderr[-2000:]}")
        model = run_worker([python(), HERE / "serving_worker.py", "facts", f"sqlite:///{tmp}/mlruns.db", "arrests", tmp / "rows.json"])
        rows, columns = json.loads((tmp / "rows.json").read_text()), model["columns"]
        uri = f"sqlite:///{tmp}/mlruns.db"
        services = {"mlflow": ([BIN / "mlflow", "models", "serve", "-m", f"models:/arrests/{model['version']}", "--env-manager", "local",
                                "-h", "127.0.0.1", "-p", "{port}", "-w", a.workers],
                               {"MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})}  # it execs `uvicorn`
        if skipped is None:
            services["ours"] = ([CLI, "serve", "--config", cfg, "--model", f"arrests/{model['version']}", "--host", "127.0.0.1",
                                 "--port", "{port}", "--log-level", "warning"], {})  # one process, as mlflow's -w 1
        results = {}
        for name, (argv_t, env) in services.items():  # back to back, same model, same cases
            port = free_port()
            before = log_rows(tmp)
            proc, started = start([str(x).replace("{port}", str(port)) for x in argv_t], port, tmp, env)
            try:
                cases = load_cases(f"http://127.0.0.1:{port}/invocations", rows, columns, seconds, tmp)
                profiled = (load_cases(f"http://127.0.0.1:{port}/invocations", rows, columns, seconds, tmp, profile_pid=proc.pid)
                            if a.profile and name == "ours" else None)
            finally: stop(proc)
            passes = [cases] + ([profiled] if profiled else [])
            scored = sum((c["requests"] + 1) * c["rows_per_request"] for p_ in passes for c in p_)  # + the warm-up request
            in_flight = sum(c["concurrency"] * c["rows_per_request"] for p_ in passes for c in p_)  # sent, not counted by wrk at its end
            results[name] = {"start_to_ping_seconds": started, "cases": cases, **({"profiled_cases": profiled} if profiled else {}),
                             **({"inference_log_rows": log_rows(tmp) - before, "rows_answered_by_wrk": scored, "rows_possibly_in_flight": in_flight,
                                 "inference_log_complete": scored <= log_rows(tmp) - before <= scored + in_flight} if name == "ours" else {})}
    path = write_result("serving", {"smoke": a.smoke, "targets": TARGETS, "duration_seconds": seconds, "workers": a.workers,
                                    "ours_skipped": skipped, "in_process_predict": model["predict_ms"],
                                    "in_process_predict_one_thread": model["predict_ms_one_thread"], "one_thread_changed": model["one_thread_changed"], "model": model["uri"],
                                    "services": results}, a.out)
    for name, r in results.items():
        print(name, f"start {r['start_to_ping_seconds']:.2f}s", [(c["case"], round(c["requests_per_second"], 1), round(c["p99_ms"], 1))
                                                                  for c in r["cases"]], file=sys.stderr)
    return path


if __name__ == "__main__":
    print(main())
