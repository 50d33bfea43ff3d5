"""Each task end to end on real data the project has never seen (issue 17): scikit-learn's wine (three named classes,
multiclass) and diabetes (a quantity, regression) through all six stages with `mlops-nb run`, then a labelled batch
through `mlops-nb monitor`. Split from tests/test_real_data.py so the two workers share the real-data runs."""
import pandas as pd
import pytest

from conftest import read_json, run_cli
from test_real_data import _assert_a_users_run, _run


@pytest.mark.parametrize("name, task, metric", [("wine", "multiclass", "roc_auc"), ("diabetes", "regression", "rmse")])
def test_each_task_end_to_end_served_and_monitored(tmp_path_factory, name, task, metric):
    linear = "ridge" if task == "regression" else "logistic_regression"  # logistic regression on a number: a config error
    run = _run(tmp_path_factory, name, model={"cv_folds": 3, "candidates": [linear, "hist_gradient_boosting"]})
    schema = _assert_a_users_run(run)
    assert schema["task"] == task and f"test_{metric}" in run["summary"]["metrics"]
    batch = run["folder"] / "batch.csv"
    pd.read_csv(run["data"]).sample(n=120, random_state=1).to_csv(batch, index=False)
    model = run["summary"]["model"]
    proc = run_cli("monitor", batch, "--config", run["config"], "--labels", "--model", f"{model['name']}/{model['version']}",
                   "--batch-id", f"{name}-batch", "--exit-zero", cwd=run["folder"], timeout=600)
    assert proc.returncode == 0, proc.stderr
    decision = read_json(run["folder"] / "reports" / "monitoring" / f"{name}-batch" / "decision.json")
    assert decision["task"] == task and metric in decision["performance"]
    assert read_json(run["run_dir"] / "deploy.json")["batch_scoring"]["columns_written"] == (
        ["probability", "prediction", "model_version"] if task == "multiclass" else ["prediction", "model_version"])
