"""Pipeline measurements that need a fresh process each (the project's venv); prints a RESULT JSON line.

    pipeline_worker.py render RUN_DIR                 time render_html of each executed stage notebook
    pipeline_worker.py kernel N                       papermill's Python API on an empty notebook, N times in one process
    pipeline_worker.py mlflow FOLDER                  MLflow costs: import, store creation, runs, metrics, artifacts, log_model
"""
from __future__ import annotations

import json, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from bench_pipeline import STAGES  # noqa: E402  (the pipeline's own list)


def empty_notebook(path: Path) -> Path:
    "A notebook with the stage parameters cell and one trivial cell."
    import nbformat
    params = nbformat.v4.new_code_cell("CONFIG: str = None\nRUN_DIR: str = None"); params.metadata["tags"] = ["parameters"]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}, "language_info": {"name": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell("x = 1")], metadata=meta), path)
    return path


def render(run_dir: str) -> dict:
    t0 = time.perf_counter()
    from mlops_nb.pipeline import render_html
    out = {"import_seconds": time.perf_counter() - t0, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for s in STAGES:
            nb = Path(run_dir) / f"{s}.ipynb"
            if not nb.exists(): continue
            t = time.perf_counter()
            render_html(nb, Path(tmp) / f"{s}.html", title=s)
            out["stages"][s] = {"seconds": time.perf_counter() - t, "html_bytes": (Path(tmp) / f"{s}.html").stat().st_size,
                                "notebook_bytes": nb.stat().st_size}
    return out


def kernel(n: str) -> dict:
    "Kernel start and papermill overhead per notebook, from one process (as the pipeline runs stages)."
    t0 = time.perf_counter()
    from mlops_nb.pipeline import _kernel_manager
    import papermill as pm
    from jupyter_core.utils import run_sync
    imported = time.perf_counter() - t0
    times = []
    with tempfile.TemporaryDirectory(prefix="mlops_nb-k") as tmp:
        nb = empty_notebook(Path(tmp) / "empty.ipynb")
        for i in range(int(n)):
            km = _kernel_manager(tmp)
            t = time.perf_counter()
            pm.execute_notebook(str(nb), str(Path(tmp) / f"out{i}.ipynb"), parameters={"CONFIG": None, "RUN_DIR": None},
                                kernel_name="python3", km=km, progress_bar=False, log_output=False, cwd=tmp)
            if km.has_kernel: run_sync(km.shutdown_kernel)(now=True)
            times.append(time.perf_counter() - t)
    return {"import_seconds": imported, "per_notebook_seconds": times}


def _timed(fn):
    t = time.perf_counter(); value = fn(); return time.perf_counter() - t, value


def mlflow_costs(folder: str, smoke: str = "") -> dict:
    "What one stage pays to MLflow, piece by piece, in a fresh process and a new SQLite store (smoke: no log_model)."
    out = {}
    out["import_mlflow"], _ = _timed(lambda: __import__("mlflow"))
    import mlflow
    import numpy as np, pandas as pd
    from sklearn.linear_model import LogisticRegression
    from mlops_nb.core import mlflow_client
    uri = f"sqlite:///{folder}/mlruns.db"
    out["create_store"], client = _timed(lambda: mlflow_client(uri))
    out["client_again"], client = _timed(lambda: mlflow_client(uri))
    out["create_experiment"], exp = _timed(lambda: client.create_experiment("bench", artifact_location=Path(folder, "art").as_uri()))
    out["create_run"], run = _timed(lambda: client.create_run(exp))
    rid = run.info.run_id
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    out["log_batch_50_metrics"], _ = _timed(lambda: client.log_batch(rid, metrics=[Metric(f"m{i}", float(i), now, 0) for i in range(50)]))
    out["log_metric_x50"], _ = _timed(lambda: [client.log_metric(rid, f"n{i}", float(i)) for i in range(50)])
    p = Path(folder) / "small.json"; p.write_text(json.dumps({"x": list(range(1000))}))
    out["log_artifact_small"], _ = _timed(lambda: client.log_artifact(rid, str(p)))
    if smoke: return {"seconds": out}
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(1000, 5)), columns=list("abcde")); y = (X.a > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    mlflow.set_tracking_uri(uri)
    from mlops_nb.evaluation import pip_requirements
    with mlflow.start_run(experiment_id=exp):
        out["log_model_explicit_requirements"], _ = _timed(lambda: mlflow.sklearn.log_model(model, name="m1", input_example=X.head(5),
                                                                                           pip_requirements=pip_requirements()))
        out["log_model_inferred_requirements"], _ = _timed(lambda: mlflow.sklearn.log_model(model, name="m2", input_example=X.head(5)))
        out["log_model_no_input_example"], _ = _timed(lambda: mlflow.sklearn.log_model(model, name="m3", pip_requirements=pip_requirements()))
    return {"seconds": out}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    emit({"mode": mode, **{"render": render, "kernel": kernel, "mlflow": mlflow_costs}[mode](*args)})
