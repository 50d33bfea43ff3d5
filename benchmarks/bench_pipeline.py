"""Pipeline: `mlops-nb run` on the built-in data, time per stage split into kernel start, imports, compute, MLflow
logging, hidden checks, papermill bookkeeping and HTML rendering; plus the pieces measured alone (papermill on an
empty notebook, render_html, MLflow calls) and a py-spy profile of a second run. Writes results/pipeline.json.

Nothing inside the notebooks is instrumented: the split comes from papermill's own per-cell timings in the executed
notebooks (start/end/duration of each cell), each cell classified by what it calls.
"""
from __future__ import annotations

import datetime as dt, json, os, re, shutil, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, REPO, TreeMemory, parser, python, run_worker, write_result  # noqa: E402


def _stages() -> dict[str, str]:
    "The pipeline's stages and their modules (notebook name without its number: 06_deploy.ipynb -> deploy)."
    from mlops_nb.pipeline import STAGES as notebooks
    return {s: re.sub(r"^\d+[a-z]?_", "", Path(nb).stem) for s, nb in notebooks.items()}


STAGE_MODULES = _stages()
STAGES = tuple(STAGE_MODULES)
CLI = Path(sys.executable).parent / "mlops-nb"
PY_SPY = HERE / ".venv-tools" / "bin" / "py-spy"
TARGETS = {"run_seconds": 90, "overhead_share": 0.30}
MLFLOW_CALLS = ("finish_stage(", "log_model(", "register_version(", "log_batch(", "monitor_periods(", "monitor_batch(")


def cell_kind(source: str) -> str:
    "What a cell mostly does: imports, context, mlflow, checks or compute (by what it calls)."
    s = source.lstrip()
    if s.startswith("#| export") and re.search(r"^\s*(from|import)\s", s, re.M) and "def " not in s: return "imports"
    if s.startswith("#| hide") and re.fullmatch(r"(#\| hide\s*)?((from|import)[^\n]*\n?\s*)+", s): return "imports"
    if any(k in s for k in MLFLOW_CALLS): return "mlflow"
    if s.startswith("#| hide"): return "checks"
    if "run_context(" in s: return "context"
    if s.startswith("#| export"): return "definitions"
    return "compute"


def _t(x: str) -> float: return dt.datetime.fromisoformat(x).timestamp()


def stage_breakdown(run_dir: Path) -> dict:
    "Per stage: papermill's duration split by cell kind, kernel start (papermill start to first cell) and bookkeeping."
    import nbformat
    out = {}
    for s in STAGES:
        p = run_dir / f"{s}.ipynb"
        if not p.exists(): continue
        nb = nbformat.read(p, as_version=4)
        pm = nb.metadata.get("papermill", {})
        cells = [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("papermill", {}).get("start_time")]
        parts = Counter()
        for c in cells:
            parts[cell_kind(c.source)] += c.metadata.papermill.get("duration") or 0.0
        kernel = _t(cells[0].metadata.papermill.start_time) - _t(pm["start_time"]) if cells else None
        top = sorted(cells, key=lambda c: -(c.metadata.papermill.get("duration") or 0))[:3]
        out[s] = {"papermill_seconds": pm.get("duration"), "kernel_start": kernel, **{k: parts.get(k, 0.0) for k in
                  ("imports", "context", "definitions", "compute", "checks", "mlflow")},
                  "papermill_bookkeeping": (pm.get("duration") or 0) - (kernel or 0) - sum(parts.values()),
                  "slowest_cells": [{"seconds": round(c.metadata.papermill.duration, 2), "kind": cell_kind(c.source),
                                     "source": c.source[:100]} for c in top]}
    return out


def run_measured(argv: list, cwd: Path, timeout: float = 7200, profile: Path | None = None) -> dict:
    "Run a command (mlops-nb run ...) with its process tree's memory watched; wall time and peaks."
    if profile is not None:
        argv = [PY_SPY, "record", "--subprocesses", "--full-filenames", "--nonblocking", "--rate", "40", "--format", "raw", "-o", profile, "--", *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemory(proc.pid) as mem:
        try: stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill(); stdout, stderr = proc.communicate()
            raise RuntimeError(f"{argv[:3]} passed {timeout} s and was stopped:\n{stderr[-3000:]}")
    wall = time.perf_counter() - t0
    kernels = sorted(((pid, v) for pid, v in mem.peaks.items() if "ipykernel" in v["cmdline"]), key=lambda kv: kv[1]["first_seen"])
    return {"returncode": proc.returncode, "wall_seconds": wall, "stderr_tail": stderr[-2000:], "stdout": stdout[-1000:],
            "peak_tree_rss_bytes": mem.peak_total, "peak_rss_by_kernel_bytes": [v["hwm"] for _, v in kernels], "kernel_pids": [pid for pid, _ in kernels],
            "peak_rss_cli_bytes": max((v["hwm"] for v in mem.peaks.values() if "mlops-nb" in v["cmdline"] and "py-spy" not in v["cmdline"]), default=None)}


def the_run_dir(reports: Path) -> Path:
    runs = [p for p in reports.iterdir() if p.is_dir() and (p / "summary.json").exists()]
    if len(runs) != 1: raise RuntimeError(f"expected one run in {reports}, found {[p.name for p in runs]}")
    return runs[0]


def profile_shares(raw: Path) -> dict:
    "py-spy raw stacks -> share of samples per category (imports, mlflow, render, papermill/nbformat, compute, other)."
    rules = [("imports", ("importlib._bootstrap",)), ("mlflow", ("/mlflow/", "/sqlalchemy/", "/alembic/")),
             ("render", ("/nbconvert/", "/jinja2/", "/mistune/", "/bleach/", "/beautifulsoup", "/bs4/")),
             ("papermill/nbformat", ("/papermill/", "/nbclient/", "/nbformat/", "/jupyter_client/", "/jsonschema", "/fastjsonschema")),
             ("plots", ("/matplotlib/",)), ("shap", ("/shap/",)), ("sklearn", ("/sklearn/",)),
             ("pandas/numpy/scipy", ("/pandas/", "/numpy/", "/scipy/", "/fairlearn/"))]
    counts, total = Counter(), 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit(): continue
        n = int(n); total += n
        counts[next((name for name, keys in rules if any(k in stack for k in keys)), "other")] += n
    return {"samples": total, "shares": {k: v / total for k, v in counts.most_common()} if total else {}}


def _function(frame: str) -> str:
    """`name (/path/mlops_nb/monitoring.py:12)` -> `monitoring.name`; a function defined by the stage notebook itself (a cell
    of the kernel, /tmp/ipykernel_<pid>/...) -> `name`; a library frame -> `sklearn/ensemble/_forest.py name`."""
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    if "/mlops_nb/" in path: return f"{Path(path).stem}.{name}"
    if "/ipykernel_" in path: return name
    return f"{path.split('site-packages/')[-1]} {name}"


def _ours(frame: str) -> bool:
    "A frame of our code: the package, or a function the stage notebook defined (not the cell's own top level)."
    return "/mlops_nb/" in frame or ("/ipykernel_" in frame and not frame.startswith("<module> ("))


_PLUMBING = ("/threading.py", "/joblib/", "/concurrent/", "/multiprocessing/", "sklearn/utils/parallel.py", "importlib", "ipykernel",
             "IPython", "/tornado/", "/asyncio/", "/zmq/", "traitlets", "runpy", "<frozen", "_param_validation.py")


def _sample_key(frames: list[str]) -> str:
    "Innermost function of ours in a sample (package or stage notebook); else the outermost library function (worker threads, imports)."
    ours = [f for f in frames if _ours(f)]
    if ours: return _function(ours[-1])
    lib = [f for f in frames if "site-packages/" in f and not any(p in f for p in _PLUMBING)]
    return "(no function of ours on the stack) " + _function(lib[0]) if lib else "(kernel, imports or cell code)"


def _stage_names() -> dict[str, set]:
    "The names each stage notebook defines (its module's attributes): they tell which kernel ran which stage."
    import importlib
    names = {s: set(vars(importlib.import_module(f"mlops_nb.{m}"))) for s, m in STAGE_MODULES.items()}
    return {s: n - set().union(*(v for k, v in names.items() if k != s)) for s, n in names.items()}  # names unique to a stage


def profile_by_stage(raw: Path) -> dict:
    """Per stage: where its kernel's time goes (`_sample_key`), as shares of the stage's samples. A kernel's stage is the
    stage whose own functions (defined by its notebook's cells) appear most in its samples."""
    per_pid, defined = {}, {}
    for line in raw.read_text(errors="replace").splitlines():
        pids = re.findall(r'(?:^|;)process (\d+):', line)  # root process first, the sampled (sub)process last
        stack, _, n = line.rpartition(" ")
        if not pids or not n.isdigit() or "ipykernel_launcher" not in line.split(";")[len(pids) - 1]: continue
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        pid = int(pids[-1])
        per_pid.setdefault(pid, Counter())[_sample_key(frames)] += int(n)
        defined.setdefault(pid, Counter()).update(f.split(" (")[0] for f in frames if "/ipykernel_" in f)
    unique, out = _stage_names(), {}
    for pid, c in per_pid.items():
        stage = max(unique, key=lambda s: sum(v for k, v in defined[pid].items() if k in unique[s]))
        if not any(k in unique[stage] for k in defined[pid]): continue  # an unrelated kernel (e.g. a scratch notebook)
        out[stage] = {"samples": sum(c.values()), "top": [{"function": f, "share": v / max(sum(c.values()), 1)} for f, v in c.most_common(8)]}
    return {s: out[s] for s in STAGES if s in out}


def pipeline_run(folder: Path, config: Path | None = None, profile: Path | None = None, timeout: float = 7200,
                 stages: str | None = None, extra_config: str = "") -> dict:
    "One `mlops-nb run` in `folder` (own SQLite store), measured, with its stage breakdown and render times."
    cfg = config or folder / "config.yaml"
    if config is None: cfg.write_text("tracking:\n  uri: sqlite:///mlruns.db\n" + extra_config)
    m = run_measured([CLI, "run", "--config", cfg, "--out", folder / "reports", *(["--stages", stages] if stages else [])], folder, timeout, profile)
    if m["returncode"] not in (0, 3): raise RuntimeError(f"mlops-nb run failed (exit {m['returncode']}):\n{m['stderr_tail']}")
    run_dir = the_run_dir(folder / "reports")
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = {k: v["seconds"] for k, v in summary["stages"].items()}
    breakdown = stage_breakdown(run_dir)
    render = run_worker([python(), HERE / "pipeline_worker.py", "render", run_dir])
    compute = sum(b["compute"] for b in breakdown.values())
    return {**m, "status": summary["status"], "stage_seconds": stages, "breakdown": breakdown, "render": render,
            "outside_stages_seconds": m["wall_seconds"] - sum(stages.values()),
            "profile_by_stage": profile_by_stage(profile) if profile else None,
            "compute_seconds": compute, "overhead_share": 1 - compute / m["wall_seconds"],
            "overhead_share_checks_as_compute": 1 - (compute + sum(b["checks"] for b in breakdown.values())) / m["wall_seconds"]}


def import_costs(modules=("mlops_nb.core", *(f"mlops_nb.{m}" for m in STAGE_MODULES.values()), "mlops_nb.pipeline", "mlflow", "shap")) -> dict:
    "Seconds to import each module in a fresh interpreter, and the heaviest packages under the stage modules (-X importtime)."
    out, heavy = {}, Counter()
    for m in modules:
        proc = subprocess.run([python(), "-X", "importtime", "-c", f"import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)"],
                              capture_output=True, text=True, check=True)
        out[m] = float(proc.stdout.strip())
        if m.startswith("mlops_nb."):
            for line in proc.stderr.splitlines():  # import time: self [us] | cumulative | imported package
                parts = line.removeprefix("import time:").split("|")
                if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("     "):  # depth 0 and 1
                    name = parts[2].strip().split(".")[0]
                    if name != "mlops_nb": heavy[name] = max(heavy[name], int(parts[1]) / 1e6)
    return {"seconds": out, "top_level_packages": dict(heavy.most_common(10))}


def main(argv=None) -> Path:
    p = parser(__doc__)
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profiled run")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        (tmp / "run").mkdir()
        run = pipeline_run(tmp / "run", stages="eda" if a.smoke else None, extra_config="data:\n  sample_rows: 600\n" if a.smoke else "")
        kernel = run_worker([python(), HERE / "pipeline_worker.py", "kernel", 1 if a.smoke else 5])
        nb = tmp / "empty.ipynb"
        subprocess.run([python(), "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); from pipeline_worker import empty_notebook; "
                        f"from pathlib import Path; empty_notebook(Path({str(nb)!r}))"], check=True)
        t = time.perf_counter()
        subprocess.run([Path(sys.executable).parent / "papermill", nb, tmp / "empty-out.ipynb", "--no-progress-bar"],
                       check=True, capture_output=True)
        papermill_cli = time.perf_counter() - t
        (tmp / "mlflow").mkdir()
        mlflow = run_worker([python(), HERE / "pipeline_worker.py", "mlflow", tmp / "mlflow", *(["smoke"] if a.smoke else [])])
        imports = import_costs(("mlops_nb.eda",) if a.smoke else None) if a.smoke else import_costs()
        profile = None
        if not a.smoke and not a.no_profile and PY_SPY.exists():
            (tmp / "prof").mkdir()
            raw = tmp / "profile.txt"
            prun = pipeline_run(tmp / "prof", profile=raw)
            profile = {"wall_seconds_under_profiler": prun["wall_seconds"], **profile_shares(raw)}
    path = write_result("pipeline", {"smoke": a.smoke, "targets": TARGETS, "run": run, "kernel_api": kernel,
                                     "papermill_cli_empty_notebook_seconds": papermill_cli, "mlflow": mlflow, "imports": imports,
                                     "profile": profile}, a.out)
    print(f"run {run['wall_seconds']:.1f}s, compute {run['compute_seconds']:.1f}s, overhead {run['overhead_share']:.0%}", file=sys.stderr)
    return path


if __name__ == "__main__":
    print(main())
