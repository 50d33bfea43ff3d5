"""The served model's facts and its in-process predict time (own process, the project's venv).

    serving_worker.py facts TRACKING_URI NAME ROWS_OUT.json ONE_THREAD_DIR [IMPORT_REPEATS]
        latest version of NAME: columns, 1,000 rows, predict times as logged and with one thread, and a copy of the
        MLflow model folder whose model predicts with one thread (`serving.single_threaded`), for `mlflow models serve`
    serving_worker.py register CONFIG RUN_DIR
        the smoke's quick model: a random forest registered the way the evaluation stage does (no pipeline run)
"""
from __future__ import annotations

import json, shutil, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def register(config: str, run_dir: str) -> dict:
    "A small random forest (n_jobs=2 as logged, like the built-in candidate) on a sample, registered with passing gates."
    from mlops_nb.core import run_context
    from mlops_nb.eda import load_data, reference_statistics
    from mlops_nb.evaluation import gate, log_model, predict_outputs, register_version
    from mlops_nb.models import build_pipeline, model_columns, target_vector
    ctx = run_context(config, run_dir)
    df, schema = load_data(ctx)
    X = df[model_columns(schema)]
    pipeline = build_pipeline(schema, "random_forest", rows=len(df)).fit(X, target_vector(df, ctx.config))
    reference = reference_statistics(df, schema, predict_outputs(pipeline, X)["score"])
    return {"model": register_version(ctx, log_model(ctx, pipeline, X, reference), gates=[gate("smoke", 1.0, 0.5)])}


def _predict_times(model, data) -> dict:
    "Median and p99 of `predict_proba` on 1 and 1,000 rows, in process."
    times = {}
    for n in (1, 1000):
        X = data.head(n)
        model.predict_proba(X)  # warm
        reps = []
        for _ in range(200 if n == 1 else 50):
            t = time.perf_counter()
            model.predict_proba(X)
            reps.append(time.perf_counter() - t)
        times[f"rows_{n}"] = {"median_ms": statistics.median(reps) * 1000, "p99_ms": sorted(reps)[int(len(reps) * 0.99) - 1] * 1000}
    return times


def import_seconds(module: str, repeats: int = 3) -> float:
    "Median seconds to import a module in a fresh interpreter (part of every start)."
    import subprocess
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(repeats)]
    return statistics.median(times)


def facts(uri: str, name: str, rows_out: str, one_thread_dir: str, import_repeats: str = "3") -> dict:
    import skops.io
    from mlops_nb.core import mlflow_client
    from mlops_nb.evaluation import load_model_version
    from mlops_nb.serving import single_threaded
    from sklego.datasets import load_arrests
    client = mlflow_client(uri)
    version = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    loaded = load_model_version(client, name, str(version))
    columns = list(loaded.model.feature_names_in_)
    data = load_arrests(as_frame=True)[columns].sample(1000, random_state=0, replace=True).reset_index(drop=True)
    Path(rows_out).write_text(json.dumps(json.loads(data.to_json(orient="records"))))
    as_logged = _predict_times(loaded.model, data)
    changed = single_threaded(loaded.model)  # as our service runs it
    one_thread = _predict_times(loaded.model, data) if changed else as_logged
    shutil.copytree(loaded.path, one_thread_dir)  # the same MLflow model folder (signature, example) ...
    skops.io.dump(loaded.model, next(Path(one_thread_dir).rglob("model.skops")))  # ... whose model predicts in one thread
    return {"version": version, "uri": f"models:/{name}/{version}", "estimator": type(loaded.model[-1]).__name__,
            "columns": columns, "predict_ms": as_logged, "predict_ms_one_thread": one_thread, "one_thread_changed": changed,
            "import_seconds": {m: import_seconds(m, int(import_repeats)) for m in ("sklearn.ensemble", "mlflow", "mlops_nb.cli")}}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    emit({"register": register, "facts": facts}[mode](*args))
