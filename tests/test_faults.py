"""Faults in the pipeline: each leaves a failed run with a visible banner, loses nothing, and changes no registry."""
import signal, sqlite3, subprocess, threading, time
from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient

from conftest import CLI, NBS, read_json, run_cli, write_config


def _notebooks_with(tmp_path, notebook: str, code: str, before: str | None = None) -> Path:
    "A copy of the stage notebooks with `code` inserted into `notebook` (before the cell containing `before`, else at the end)."
    nbdir = tmp_path / "nbs"; nbdir.mkdir(exist_ok=True)
    for p in NBS.glob("0*.ipynb"): (nbdir / p.name).write_bytes(p.read_bytes())
    nb = nbformat.read(nbdir / notebook, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if before in c.source) if before else len(nb.cells)
    nb.cells.insert(at, nbformat.v4.new_code_cell(code))
    nbformat.write(nb, nbdir / notebook)
    return nbdir


def _only_run(tmp_path) -> Path:
    runs = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def _assert_failed_with_banner(tmp_path, stage: str, cause: str) -> dict:
    run_dir = _only_run(tmp_path)
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "failed" and s["stages"][stage]["status"] == "failed" and cause in s["stages"][stage]["error"]
    html = (run_dir / f"{stage}.html").read_text()
    assert f'Stage "{stage}" failed.' in html and cause in html
    nb = nbformat.read(run_dir / f"{stage}.ipynb", as_version=4)
    assert "mlops-nb-failure" in nb.cells[0].metadata.get("tags", [])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(s["mlflow_run_id"]).info.status == "FAILED"
    return s


def test_killed_kernel_is_named_in_a_banner(tmp_path):
    nbdir = _notebooks_with(tmp_path, "01_eda.ipynb", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", before="## Schema")
    proc = run_cli("run", "--config", write_config(tmp_path), "--stages", "eda", "--notebooks", nbdir, cwd=tmp_path)
    assert proc.returncode == 1 and "SIGKILL" in proc.stderr and "Traceback" not in proc.stderr
    s = _assert_failed_with_banner(tmp_path, "eda", "killed by SIGKILL")
    assert "Integrity checks" in (_only_run(tmp_path) / "eda.html").read_text()  # the part that ran is kept


def test_time_limit_stops_the_stage_and_resume_reuses_the_cache(tmp_path):
    nbdir = _notebooks_with(tmp_path, "01_eda.ipynb", "import time; time.sleep(120)", before="## Schema")
    # the resumed run keeps this limit: 30 s leaves the real stage (about 6 s) room on a loaded machine (12 s did not, once)
    config = write_config(tmp_path, pipeline={"stage_timeouts": {"eda": 30}})
    t0 = time.monotonic()
    proc = run_cli("run", "--config", config, "--stages", "eda", "--notebooks", nbdir, cwd=tmp_path)
    assert proc.returncode == 1 and time.monotonic() - t0 < 100  # stopped, not left to sleep its 120 s
    _assert_failed_with_banner(tmp_path, "eda", "longer than its limit of 30 s")
    run_dir = _only_run(tmp_path)
    cached = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cache").iterdir()}
    assert {"data.parquet", "schema.json"} <= set(cached)
    proc = run_cli("run", "--resume", run_dir.name, "--stages", "eda", cwd=tmp_path)  # the real notebooks now
    assert proc.returncode == 0, proc.stderr
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "succeeded" and s["run_id"] == run_dir.name
    assert all((run_dir / "cache" / n).stat().st_mtime_ns == t for n, t in cached.items())  # inputs reused, not rebuilt
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(s["mlflow_run_id"]).info.status == "FINISHED"


def test_failure_after_registration_keeps_the_version_tagged_without_challenger(tmp_path):
    nbdir = _notebooks_with(tmp_path, "04_evaluation.ipynb", 'raise RuntimeError("failure after registration")')
    config = write_config(tmp_path, data={"sample_rows": 1200}, model={"candidates": ["logistic_regression"], "cv_folds": 3},
                          gates={"min_primary_metric": 0.5, "min_lift_over_baseline": None})
    proc = run_cli("run", "--config", config, "--stages", "eda,baseline,evaluation", "--notebooks", nbdir, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    s = _assert_failed_with_banner(tmp_path, "evaluation", "failure after registration")
    assert s["failed_model_versions"] == ["arrests/1"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (version,) = client.search_model_versions("name = 'arrests'")  # kept for audit, never deleted
    assert version.tags["mlops_nb.failed_stage"] == "evaluation" and version.tags["mlops_nb.gates_passed"] == "true"
    assert "challenger" not in client.get_model_version("arrests", "1").aliases  # its gates passed, yet it is not a challenger


def test_ctrl_c_marks_the_run_failed(tmp_path):
    nbdir = _notebooks_with(tmp_path, "01_eda.ipynb", "import time; time.sleep(120)", before="## Schema")
    proc = subprocess.Popen([str(CLI), "run", "--config", str(write_config(tmp_path)), "--stages", "eda", "--notebooks", str(nbdir)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not list((tmp_path / "reports").glob("*/eda.ipynb")) and time.monotonic() < deadline: time.sleep(0.5)
    time.sleep(3)  # well inside the sleeping cell
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted" in err and "Traceback" not in err
    _assert_failed_with_banner(tmp_path, "eda", "interrupted (Ctrl-C)")


def test_unwritable_reports_folder_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"; blocker.write_text("not a folder")
    proc = run_cli("run", "--stages", "eda", "--out", blocker / "reports", cwd=tmp_path)
    assert proc.returncode == 1 and "cannot write the reports folder" in proc.stderr and str(blocker) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_concurrent_runs_on_a_fresh_store(tmp_path):
    "Three runs started at once on a project with no store yet: all succeed, the store holds all three."
    config = write_config(tmp_path, data={"sample_rows": 400})
    procs = [subprocess.Popen([str(CLI), "run", "--config", str(config), "--stages", "eda"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0, 0], [r[1] for r in results]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("arrests")
    parents = client.search_runs([exp.experiment_id], "tags.`mlops_nb.kind` = 'pipeline'")
    assert len(parents) == 3 and all(r.info.status == "FINISHED" for r in parents)


def test_locked_store_delays_but_keeps_every_metric(tmp_path):
    from mlops_nb.core import log_batch, run_context
    ctx = run_context(write_config(tmp_path), tmp_path / "run")
    db = sqlite3.connect(tmp_path / "mlruns.db", timeout=1, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")  # another writer holds the store
    release = threading.Timer(12, lambda: db.execute("COMMIT")); release.start()
    t0 = time.monotonic()
    log_batch(ctx, ctx.parent_run_id, metrics={f"m{i}": float(i) for i in range(150)})
    waited = time.monotonic() - t0
    release.join()
    metrics = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(ctx.parent_run_id).data.metrics
    assert waited >= 5 and len(metrics) == 150 and metrics["m149"] == 149.0
