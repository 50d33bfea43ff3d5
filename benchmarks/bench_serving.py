"""Serving, like for like: `mlops-nb serve` (ours) against `mlflow models serve --env-manager local` twice: with the
same single-threaded model ours serves (`serving.single_threaded`), and with the model as logged. One worker process
each, all on 127.0.0.1, loaded with `wrk`: 1 row at concurrency 1 and 16, 1,000 rows at concurrency 4 (30 s a case;
--duration). Two rounds, the services in alternating order (ours first, then last), so that a machine growing busier
favours neither. Also start to the first /ping 200, the in-process predict times, errors, and whether our inference
log holds every scored row. Writes results/serving.json; `report_section` and `target_rows` turn it into the README's
text (every figure from the JSON).

wrk and the servers share the machine's cores: every service pays that equally, the absolute figures are low.
"""
from __future__ import annotations

import json, os, signal, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, parser, python, run_worker, write_result  # noqa: E402

BIN = Path(sys.executable).parent
CLI = BIN / "mlops-nb"
TARGETS = {"c16_throughput_vs_mlflow_one_thread": 10, "c16_p99_ms": 50, "c1_p50_vs_mlflow_one_thread": 1.0,
           "rows1000_vs_mlflow_one_thread": 2, "start_to_ping_seconds": 3, "errors": 0}
CASES = (("1 row, concurrency 1", 1, 1), ("1 row, concurrency 16", 1, 16), ("1,000 rows, concurrency 4", 1000, 4))
SERVICES = ("ours", "mlflow_one_thread", "mlflow_as_logged")
LABELS = {"ours": "ours (one thread)", "mlflow_one_thread": "mlflow, the same one-thread model", "mlflow_as_logged": "mlflow, the model as logged",
          "ours_without_log": "ours, inference log off"}
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
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list, port: int, cwd: Path, env: dict, timeout: float = 120) -> tuple[subprocess.Popen, float]:
    "Start a server in its own process group; seconds from start until GET /ping answers 200."
    log = open(cwd / f"server-{port}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    while time.perf_counter() - t0 < timeout:  # bounded
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {(cwd / f'server-{port}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{argv[:3]}: no /ping 200 within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    "Stop a server we started: its process group (it was started as the group's leader), then wait."
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def body(rows: list[dict], columns: list[str]) -> str:
    return json.dumps({"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}})


def wrk(url: str, payload: str, connections: int, seconds: float, folder: Path) -> dict:
    "One wrk case: POST `payload` as JSON; requests, errors and latency percentiles (ms), the load average before and after."
    script = folder / f"wrk-{connections}-{len(payload)}.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{payload}]==]\n{DONE_LUA}')
    threads = min(connections, 2)
    load_before = os.getloadavg()[0]
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", script, url],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "seconds": secs, "requests_per_second": r["requests"] / secs,
            "errors": r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"],
            "errors_by_kind": {k: r[k] for k in ("connect", "read", "write", "status", "timeout")},
            "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
            **{k.replace("_us", "_ms"): r[k] / 1000 for k in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us")}}


def batch_metrics(url: str) -> dict:
    "Our service's micro-batching so far, from its /metrics: predict calls, rows, seconds of queue wait."
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url.replace("/invocations", "/metrics"), timeout=30) as r:
        samples = {s.name: s.value for f in text_string_to_metric_families(r.read().decode()) for s in f.samples if not s.labels}
    return {"calls": samples["mlops_nb_batch_rows_count"], "rows": samples["mlops_nb_batch_rows_sum"],
            "requests": samples["mlops_nb_batch_queue_wait_seconds_count"], "wait": samples["mlops_nb_batch_queue_wait_seconds_sum"]}


def load_cases(url: str, rows: list[dict], columns: list[str], seconds: float, folder: Path, ours: bool = False,
               cases: tuple = CASES) -> list[dict]:
    out = []
    for name, n, c in cases:
        payload = body([rows[i % len(rows)] for i in range(n)], columns)
        request = urllib.request.Request(url, payload.encode(), {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).read()  # warm
        before = batch_metrics(url) if ours else None
        r = wrk(url, payload, c, seconds, folder)
        if ours:  # how the micro-batches formed during the case
            after = batch_metrics(url)
            calls, waited = after["calls"] - before["calls"], after["requests"] - before["requests"]
            r["batching"] = {"predict_calls": calls, "mean_batch_rows": (after["rows"] - before["rows"]) / max(calls, 1),
                             "mean_queue_wait_ms": 1000 * (after["wait"] - before["wait"]) / max(waited, 1)}
        out.append({"case": name, "rows_per_request": n, "concurrency": c, **r, "rows_per_second": r["requests_per_second"] * n})
    return out


def log_rows(folder: Path) -> int:
    "Rows in every .jsonl inference log under `folder`."
    return sum(sum(1 for _ in open(p, encoding="utf-8")) for p in folder.rglob("*.jsonl"))


def service_commands(tmp: Path, cfg: Path, model: dict, workers: int) -> dict:
    "The command and environment of each service (`{port}` filled in at start)."
    uri = f"sqlite:///{tmp}/mlruns.db"
    mlflow_env = {"MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # it execs `uvicorn`
    mlflow = [BIN / "mlflow", "models", "serve", "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}", "-w", workers]
    ours = [CLI, "serve", "--config", cfg, "--model", f"arrests/{model['version']}", "--allow-unapproved", "--host", "127.0.0.1",
            "--port", "{port}", "--log-level", "warning", "--poll-seconds", "0", "--inference-log", tmp / "inference-log"]
    no_log = [*ours[:ours.index("--inference-log")], "--no-inference-log"]
    return {"ours": (ours, {}),  # one process, as mlflow's -w 1; a benchmark of a version, not a promotion
            "ours_without_log": (no_log, {}),  # the same, the inference log off: what the log costs
            "mlflow_one_thread": ([*mlflow, "-m", tmp / "model-one-thread"], mlflow_env),
            "mlflow_as_logged": ([*mlflow, "-m", model["uri"]], mlflow_env)}


def measure(name: str, commands: dict, tmp: Path, rows: list, columns: list, seconds: float, cases: tuple = CASES) -> dict:
    "Start one service, load it with the cases, stop it; for ours, whether the inference log holds every scored row."
    argv_t, env = commands[name]
    port = free_port()
    before = log_rows(tmp / "inference-log") if (tmp / "inference-log").exists() else 0
    proc, started = start([str(x).replace("{port}", str(port)) for x in argv_t], port, tmp, env)
    try:
        cases = load_cases(f"http://127.0.0.1:{port}/invocations", rows, columns, seconds, tmp, name.startswith("ours"), cases)
    finally:
        stop(proc)
    out = {"start_to_ping_seconds": started, "cases": cases}
    if name == "ours":
        logged = log_rows(tmp / "inference-log") - before
        scored = sum((c["requests"] + 1) * c["rows_per_request"] for c in cases)  # + the warm-up request
        in_flight = sum(c["concurrency"] * c["rows_per_request"] for c in cases)  # sent, not counted by wrk at its end
        out.update(inference_log_rows=logged, rows_answered_by_wrk=scored, rows_possibly_in_flight=in_flight,
                   inference_log_complete=scored <= logged <= scored + in_flight)
    return out


def mean_cases(runs: list[dict]) -> list[dict]:
    "Per case, the mean over the rounds of throughput and latency percentiles."
    keys = ("requests_per_second", "rows_per_second", "p50_ms", "p90_ms", "p99_ms")
    return [{**{k: runs[0]["cases"][i][k] for k in ("case", "rows_per_request", "concurrency")},
             **{k: sum(r["cases"][i][k] for r in runs) / len(runs) for k in keys},
             "errors": sum(r["cases"][i]["errors"] for r in runs)} for i in range(len(CASES))]


def summarise(rounds: list[dict]) -> dict:
    "Each service's mean over the rounds, and our ratios against both mlflow services."
    mean = {s: {"cases": mean_cases([r[s] for r in rounds]),
                "start_to_ping_seconds": sum(r[s]["start_to_ping_seconds"] for r in rounds) / len(rounds)} for s in SERVICES}
    ratios = {}
    for peer in ("mlflow_one_thread", "mlflow_as_logged"):
        o, m = mean["ours"]["cases"], mean[peer]["cases"]
        ratios[peer] = {"c1_p50": o[0]["p50_ms"] / m[0]["p50_ms"], "c16_throughput": o[1]["requests_per_second"] / m[1]["requests_per_second"],
                        "rows1000_rows_per_second": o[2]["rows_per_second"] / m[2]["rows_per_second"]}
    return {"mean": mean, "ratios": ratios}


def main(argv=None) -> Path:
    p = parser(__doc__)
    p.add_argument("--duration", type=float, default=30, help="seconds per wrk case")
    p.add_argument("--rounds", type=int, default=2, help="rounds, the services' order alternating")
    p.add_argument("--workers", type=int, default=1, help="worker processes of mlflow (ours serves from one process)")
    a = p.parse_args(argv)
    seconds, rounds = (1, 1) if a.smoke else (a.duration, a.rounds)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk; `make system-packages` does it)")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        cfg = tmp / "config.yaml"
        cfg.write_text("tracking:\n  uri: sqlite:///mlruns.db\n" + ("data:\n  sample_rows: 1500\n" if a.smoke else ""))
        if a.smoke:  # a quick forest registered as the evaluation stage does
            run_worker([python(), HERE / "serving_worker.py", "register", cfg, tmp / "run"])
        else:  # the model the pipeline chooses and registers
            run = subprocess.run([CLI, "run", "--config", cfg, "--out", tmp / "reports"], cwd=tmp, capture_output=True, text=True, timeout=1800)
            if run.returncode not in (0, 3):
                raise RuntimeError(f"mlops-nb run failed: {run.stderr[-2000:]}")
        model = run_worker([python(), HERE / "serving_worker.py", "facts", f"sqlite:///{tmp}/mlruns.db", "arrests", tmp / "rows.json",
                            tmp / "model-one-thread", 1 if a.smoke else 3])
        rows, columns = json.loads((tmp / "rows.json").read_text()), model["columns"]
        commands = service_commands(tmp, cfg, model, a.workers)
        results = []
        for i in range(rounds):  # ours first, then last
            order = SERVICES if i % 2 == 0 else SERVICES[::-1]
            results.append({name: measure(name, commands, tmp, rows, columns, seconds) for name in order} | {"order": list(order)})
            results[-1]["ours_without_log"] = measure("ours_without_log", commands, tmp, rows, columns, seconds, CASES[1:])
    path = write_result("serving", {"smoke": a.smoke, "targets": TARGETS, "duration_seconds": seconds, "workers": a.workers,
                                    "model": model["uri"], "estimator": model["estimator"], "in_process_predict": model["predict_ms"],
                                    "in_process_predict_one_thread": model["predict_ms_one_thread"],
                                    "one_thread_changed": model["one_thread_changed"], "import_seconds": model["import_seconds"],
                                    "rounds": results, **summarise(results)}, a.out)
    print(report_section(json.loads(path.read_text())), file=sys.stderr)
    return path


# ---------------------------------------------------------------- the README's text, from the JSON

def _f(x, digits=1) -> str:
    return f"{x:,.{digits}f}"


def _table(header: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _met(flag: bool) -> str:
    return "met" if flag else "**not met**"


def target_rows(d: dict) -> list[list[str]]:
    "The serving targets of issue 18: measured (mean of the rounds), against single-threaded mlflow, met or not."
    mean, ratio = d["mean"], d["ratios"]["mlflow_one_thread"]
    ours, peer = mean["ours"]["cases"], mean["mlflow_one_thread"]["cases"]
    logged = d["ratios"]["mlflow_as_logged"]
    errors = sum(c["errors"] for r in d["rounds"] for c in r["ours"]["cases"])
    complete = all(r["ours"]["inference_log_complete"] for r in d["rounds"])
    start, peer_start = mean["ours"]["start_to_ping_seconds"], mean["mlflow_one_thread"]["start_to_ping_seconds"]
    return [["serving: 1 row at concurrency 16 ≥ 10× single-threaded mlflow's throughput",
             f"{ratio['c16_throughput']:.1f}× ({_f(ours[1]['requests_per_second'], 0)} vs {_f(peer[1]['requests_per_second'], 0)} "
             f"requests/s; {logged['c16_throughput']:.1f}× mlflow as logged)", _met(ratio["c16_throughput"] >= 10)],
            ["serving: p99 ≤ 50 ms at concurrency 16", f"{_f(ours[1]['p99_ms'], 0)} ms (mlflow one thread {_f(peer[1]['p99_ms'], 0)} ms)",
             _met(ours[1]["p99_ms"] <= 50)],
            ["serving: p50 at concurrency 1 no slower than single-threaded mlflow's",
             f"{_f(ours[0]['p50_ms'])} vs {_f(peer[0]['p50_ms'])} ms ({ratio['c1_p50']:.2f}×; {logged['c1_p50']:.2f}× mlflow as logged)",
             _met(ratio["c1_p50"] <= 1.0)],
            ["serving: 1,000-row rows/s ≥ 2× single-threaded mlflow's",
             f"{ratio['rows1000_rows_per_second']:.2f}× ({_f(ours[2]['rows_per_second'], 0)} vs {_f(peer[2]['rows_per_second'], 0)} rows/s; "
             f"{logged['rows1000_rows_per_second']:.2f}× mlflow as logged)", _met(ratio["rows1000_rows_per_second"] >= 2)],
            ["serving: start to first /ping 200 ≤ 3 s", f"{_f(start)} s (mlflow {_f(peer_start)} s)", _met(start <= 3)],
            ["serving: zero errors, complete inference log", f"{errors} errors; log {'complete' if complete else 'incomplete'}",
             _met(errors == 0 and complete)]]


def gap_lines(d: dict) -> list[str]:
    "For each target not met, the gap and what the results say about its cause (from the JSON)."
    mean, ratio = d["mean"], d["ratios"]["mlflow_one_thread"]
    ours = mean["ours"]["cases"]
    one = d["in_process_predict_one_thread"]
    batching = [r["ours"]["cases"][1].get("batching") for r in d["rounds"]]
    loads = [c["load_average_before"] for r in d["rounds"] for s in SERVICES for c in r[s]["cases"]]
    load = f"load average {min(loads):.1f}–{max(loads):.1f} on {d['machine']['cores']} cores during the cases (wrk shares them)"
    out = []
    if ratio["c16_throughput"] < 10 or ours[1]["p99_ms"] > 50:
        b = [x for x in batching if x]
        formed = (f"batches of {sum(x['mean_batch_rows'] for x in b) / len(b):.1f} rows on average, each request waiting "
                  f"{sum(x['mean_queue_wait_ms'] for x in b) / len(b):.1f} ms in the queue" if b else "batching not measured")
        out.append(f"- **1 row × 16** ({ratio['c16_throughput']:.1f}×, p99 {_f(ours[1]['p99_ms'], 0)} ms): {formed}; the one-thread "
                   f"predict alone takes {_f(one['rows_1']['median_ms'])} ms for 1 row in process (p99 {_f(one['rows_1']['p99_ms'])} ms), so "
                   f"a request that arrives during a batch waits for it and then for its own; {load}.")
    if ratio["c1_p50"] > 1:
        out.append(f"- **1 row × 1** ({ratio['c1_p50']:.2f}× mlflow's p50): ours {_f(ours[0]['p50_ms'])} ms against "
                   f"{_f(one['rows_1']['median_ms'])} ms of in-process predict; {load}.")
    without = [r["ours_without_log"]["cases"] for r in d["rounds"] if "ours_without_log" in r]
    log_cost = (f"; with the inference log off, ours does {_f(sum(c[1]['rows_per_second'] for c in without) / len(without), 0)} rows/s "
                f"(against {_f(ours[2]['rows_per_second'], 0)} with it: its writer thread holds the interpreter lock while the "
                f"predict thread needs it between trees)" if without else "")
    if ratio["rows1000_rows_per_second"] < 2:
        per_request = 1000 * ours[2]["concurrency"] / ours[2]["requests_per_second"]
        out.append(f"- **1,000 rows × 4** ({ratio['rows1000_rows_per_second']:.2f}×): a request takes {_f(per_request, 0)} ms of service "
                   f"time on average, the one-thread predict of 1,000 rows {_f(one['rows_1000']['median_ms'])} ms of it in process; both "
                   f"services run that same predict on the same cores, so 2× needs the rest of mlflow's request ≥ the predict{log_cost}; "
                   f"{load}.")
    start = mean["ours"]["start_to_ping_seconds"]
    if start > 3:
        imports = d.get("import_seconds", {})
        out.append(f"- **Start** ({_f(start)} s): in a fresh interpreter, importing scikit-learn's estimators takes "
                   f"{_f(imports.get('sklearn.ensemble', float('nan')))} s and MLflow {_f(imports.get('mlflow', float('nan')))} s "
                   f"(the command line itself {_f(imports.get('mlops_nb.cli', float('nan')))} s); both are needed to load the model, "
                   f"then the registry, the download with its sha256 check and the model's load; mlflow takes "
                   f"{_f(mean['mlflow_one_thread']['start_to_ping_seconds'])} s; {load}.")
    return out


def report_section(d: dict) -> str:
    "The Serving section of benchmarks/README.md, every figure from the results."
    m = d["machine"]
    one, logged = d["in_process_predict_one_thread"], d["in_process_predict"]
    out = ["## Serving", "",
           f"*Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}; load average at the end "
           f"{m['load_average']}; {m['time']}; mlflow {d['versions'].get('mlflow')}, uvicorn {d['versions'].get('uvicorn')}.*"
           + (" **Smoke run: tiny sizes, not a measurement.**" if d.get("smoke") else ""), "",
           f"The model: {d['model']} ({d['estimator']}). In process, `predict_proba` takes {_f(logged['rows_1']['median_ms'])} ms for 1 row "
           f"and {_f(logged['rows_1000']['median_ms'])} ms for 1,000 rows as logged; with one thread "
           + (f"({', '.join(d['one_thread_changed'])} set to 1, as our service and the first mlflow service run it) "
              if d["one_thread_changed"] else "(nothing to change: the model as logged already predicts in one thread) ")
           + f"{_f(one['rows_1']['median_ms'])} and {_f(one['rows_1000']['median_ms'])} ms (medians). "
           f"`wrk` for {d['duration_seconds']:g} s a case, {d['workers']} worker process each, {len(d['rounds'])} round(s), the order "
           f"alternating ({'; '.join(', '.join(r['order']) for r in d['rounds'])}).", "", "### Targets", "",
           _table(["target", "measured (mean of the rounds)", "status"], target_rows(d)), "", "### Every case", ""]
    rows = []
    for i, r in enumerate(d["rounds"], 1):
        for name in [*r["order"], *(["ours_without_log"] if "ours_without_log" in r else [])]:
            for c in r[name]["cases"]:
                rows.append([i, LABELS[name], c["case"], _f(c["requests_per_second"], 0), _f(c["rows_per_second"], 0), _f(c["p50_ms"]),
                             _f(c["p90_ms"]), _f(c["p99_ms"]), c["errors"], f"{c['load_average_before']:.2f} → {c['load_average_after']:.2f}",
                             _f(r[name]["start_to_ping_seconds"])])
    out += [_table(["round", "service", "case", "requests/s", "rows/s", "p50 ms", "p90 ms", "p99 ms", "errors", "load average",
                    "start to /ping s"], rows), ""]
    gaps = gap_lines(d)
    if gaps:
        out += ["### Gaps and their measured causes", "", *gaps, ""]
    ratio_rows = [[LABELS[peer], f"{r['c16_throughput']:.2f}×", f"{r['c1_p50']:.2f}×", f"{r['rows1000_rows_per_second']:.2f}×"]
                  for peer, r in d["ratios"].items()]
    out += ["Ours against each mlflow service (mean of the rounds):", "",
            _table(["against", "1 row × 16: throughput", "1 row × 1: p50 (below 1 is faster)", "1,000 rows × 4: rows/s"], ratio_rows), ""]
    for r in d["rounds"]:
        o = r["ours"]
        out += [f"Inference log ({', '.join(r['order'])}): {o['inference_log_rows']:,} rows logged, {o['rows_answered_by_wrk']:,} answered to wrk "
                f"(warm-ups included), up to {o['rows_possibly_in_flight']:,} more in flight when wrk stopped: "
                f"{'complete' if o['inference_log_complete'] else '**incomplete**'}.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(main())
