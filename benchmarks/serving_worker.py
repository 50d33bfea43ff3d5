"""The served model's facts and its in-process predict time (own process, the project's venv).

    serving_worker.py facts TRACKING_URI NAME ROWS_OUT.json   latest version of NAME: columns, 1,000 rows, predict times
    serving_worker.py register CONFIG RUN_DIR                 the smoke's quick model: a logistic regression registered
                                                              the way the evaluation stage does (no pipeline run)
"""
from __future__ import annotations

import json, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def register(config: str, run_dir: str) -> dict:
    from mlops_nb.models import build_pipeline, model_columns, target_vector
    from mlops_nb.core import run_context
    from mlops_nb.eda import load_data, reference_statistics
    from mlops_nb.evaluation import log_model, positive_scores, register_version
    ctx = run_context(config, run_dir)
    df, schema = load_data(ctx)
    X = df[model_columns(schema)]
    pipeline = build_pipeline(schema, "logistic_regression").fit(X, target_vector(df, ctx.config))
    return {"model": register_version(ctx, log_model(ctx, pipeline, X, reference_statistics(df, schema, positive_scores(pipeline, X))), gates=[])}


def facts(uri: str, name: str, rows_out: str) -> dict:
    from mlops_nb.core import mlflow_client
    from mlops_nb.evaluation import load_model_version
    from sklego.datasets import load_arrests
    client = mlflow_client(uri)
    version = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    loaded = load_model_version(client, name, str(version))
    columns = list(loaded.model.feature_names_in_)
    data = load_arrests(as_frame=True)[columns].sample(1000, random_state=0, replace=True).reset_index(drop=True)
    Path(rows_out).write_text(json.dumps(json.loads(data.to_json(orient="records"))))
    def predict_times() -> dict:
        times = {}
        for n in (1, 1000):
            X = data.head(n)
            loaded.model.predict_proba(X)  # warm
            reps = []
            for _ in range(200 if n == 1 else 50):
                t = time.perf_counter(); loaded.model.predict_proba(X); reps.append(time.perf_counter() - t)
            times[f"rows_{n}"] = {"median_ms": statistics.median(reps) * 1000, "p99_ms": sorted(reps)[int(len(reps) * 0.99) - 1] * 1000}
        return times
    times = predict_times()  # the model as logged (a forest predicts with n_jobs=2)
    from mlops_nb.serving import single_threaded
    changed = single_threaded(loaded.model)  # as our service runs it
    return {"version": version, "uri": f"models:/{name}/{version}", "columns": columns, "predict_ms": times,
            "predict_ms_one_thread": predict_times() if changed else times, "one_thread_changed": changed}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    emit({"register": register, "facts": facts}[mode](*args))
