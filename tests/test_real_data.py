"""Real data the project has never seen, brought as a user would: a file and a config naming its target (issue 16, 17).

Each dataset ships offline with a package (tests/datasets.py) and goes through all six stages with `mlops-nb run`. A run
succeeds, or exits 3 on a gate, never because of the data; the version it registered stays registered; the deploy and
monitoring reports are about that version; no report mentions a column of the built-in dataset. On top: a two-value
search over an estimator of the user's is recorded and registered; on imbalanced data a threshold chosen by
cross-validation differs from 0.5 and the service decides with it. Multiclass and regression: test_real_data_tasks.py.
"""
import re

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

import datasets
from conftest import read_json, run_cli, write_config

# The built-in dataset's columns as a report shows a column: in a table cell or a code span, alone or as an encoded
# column (`colour_Black`). As words they are English ("Integrity checks", "its colour"), so prose is not searched.
BUILT_IN_COLUMNS = re.compile(r"(<t[dh][^>]*>|<code>)\s*(released|colour|checks|citizen|employed|year)(_[^<]*)?\s*</")
QUICK = {"cv_folds": 3, "candidates": ["logistic_regression", "hist_gradient_boosting"]}


def _run(tmp_path_factory, name: str, sample_rows: int | None = None, model: dict | None = None, **data) -> dict:
    "Write the dataset, run the six stages, and collect what a test looks at."
    folder = tmp_path_factory.mktemp(name)
    path, section = getattr(datasets, name)(folder)
    section = {"source": path.name, **section, **data, **({"sample_rows": sample_rows} if sample_rows else {})}
    config = write_config(folder, data=section, model=model or QUICK, monitoring={"min_batch_rows": 50})
    proc = run_cli("run", "--config", config, cwd=folder, timeout=1200)
    run_dir, = [p for p in (folder / "reports").iterdir() if p.is_dir() and p.name not in ("monitoring", "compare")]
    return {"folder": folder, "config": config, "data": path, "proc": proc, "run_dir": run_dir,
            "summary": read_json(run_dir / "summary.json")}


def _client(run: dict) -> MlflowClient:
    "The run's own store for runs and registry alike (a registry URI set by an earlier test in this process must not apply)."
    uri = f"sqlite:///{run['folder'] / 'mlruns.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _assert_a_users_run(run: dict) -> dict:
    "All six stages succeeded (or only a gate failed); the version stays registered; the reports are about it."
    proc, s, run_dir = run["proc"], run["summary"], run["run_dir"]
    assert proc.returncode in (0, 3) and "Traceback" not in proc.stderr, proc.stderr
    assert [(k, v["status"]) for k, v in s["stages"].items()] == [
        (k, "succeeded") for k in ("eda", "rai", "baseline", "evaluation", "monitoring", "deploy")], s["stages"]
    assert proc.returncode == (3 if any(g["passed"] is False for g in s["gates"]) else 0)
    model = s["model"]
    client = _client(run)
    version = client.get_model_version(model["name"], str(model["version"]))  # registered, not deleted
    assert "mlops_nb.failed_stage" not in version.tags
    for stage in ("monitoring", "deploy"):
        assert model["uri"] in (run_dir / f"{stage}.html").read_text(encoding="utf-8"), stage
    deploy = read_json(run_dir / "deploy.json")  # the service and the batch scorer answer like the model, for any data
    parity, batch = deploy["parity"], deploy["batch_scoring"]
    assert parity["passed"] is True and batch["matches_in_process"] is True, parity
    assert batch["scored"] == parity["rows"] and deploy["latency"]["1_rows"]["median_ms"] > 0
    for html in run_dir.glob("*.html"):
        assert not BUILT_IN_COLUMNS.search(html.read_text(encoding="utf-8")), html.name
    return read_json(run_dir / "eda.json")["schema"]


@pytest.fixture(scope="module")
def numeric(tmp_path_factory):
    "All numeric, a 0/1 target; the only candidate is the user's own estimator with a two-value search."
    trees = {"name": "trees", "estimator": "sklearn.ensemble.ExtraTreesClassifier", "params": {"n_estimators": 40},
             "search": {"max_depth": [3, None]}}
    return _run(tmp_path_factory, "breast_cancer", model={"cv_folds": 3, "candidates": [trees]})


def test_all_numeric_with_a_0_1_target_and_the_users_estimator(numeric):
    schema = _assert_a_users_run(numeric)
    assert (schema["task"], schema["positive_label"], schema["sensitive_features"]) == ("binary", 1, [])
    evaluation = read_json(numeric["run_dir"] / "evaluation.json")
    assert evaluation["chosen"] == "trees" and evaluation["searched"]["trees"]["max_depth"] in (3, None)
    assert {g["name"] for g in evaluation["summary"]["gates_not_evaluated"]} == {
        "max_demographic_parity_difference", "max_equalized_odds_difference"}  # no sensitive features: not passed
    client = _client(numeric)
    run = client.get_run(evaluation["mlflow_run_id"])
    assert run.data.params["chosen"] == "trees" and run.data.params["data.target"] == "target"
    assert "estimator.max_depth" in run.data.params and run.data.params["model.search_iterations"] == "10"


@pytest.fixture(scope="module")
def crashes(tmp_path_factory):
    "Labels 'alive'/'dead' (4.5% dead), sensitive `sex`, an ID and a leak dropped; the threshold chosen for F1."
    return _run(tmp_path_factory, "car_crashes", sample_rows=3000,
                model={"cv_folds": 3, "candidates": ["logistic_regression"], "threshold": "f1"})


def test_string_labels_sensitive_column_and_a_threshold_chosen_by_cross_validation(crashes):
    schema = _assert_a_users_run(crashes)
    assert (schema["task"], schema["positive_label"]) == ("binary", "dead")
    evaluation = read_json(crashes["run_dir"] / "evaluation.json")
    threshold = evaluation["threshold"]
    assert threshold != 0.5 and "f1" in evaluation["threshold_reason"]
    assert "sex" in evaluation["summary"]["fairness"]
    _service_decides_with_the_threshold(crashes, threshold)


def _service_decides_with_the_threshold(run: dict, threshold: float) -> None:
    "Serve the registered version (a real uvicorn on 127.0.0.1): its decisions are its probabilities at the threshold."
    from mlops_nb.core import load_config
    from mlops_nb.serving import BackgroundServer, ScoringService, create_app, example_payloads, service_settings
    model = run["summary"]["model"]
    cfg = load_config(run["config"])
    rows = pd.read_csv(run["data"]).drop(columns=["dead", "caseid", "injSeverity"]).head(300)
    settings = service_settings(cfg, f"{model['name']}/{model['version']}", inference_log=None, poll_seconds=0,
                                allow_unapproved=True)
    with BackgroundServer(create_app(ScoringService(settings))) as server:
        payload = example_payloads(rows)["dataframe_split"]
        answer = requests.post(f"{server.url}/invocations", json=payload, params={"probabilities": "true"}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    predictions, scores = np.array(body["predictions"]), np.array(body["probabilities"])  # the positive class's
    assert ((scores >= threshold).astype(int) == predictions).all()
    assert ((scores >= 0.5) != (scores >= threshold)).any()  # the threshold changes some decisions


def test_all_categorical_data(tmp_path_factory):
    run = _run(tmp_path_factory, "chess_endgames", sample_rows=1200)
    schema = _assert_a_users_run(run)
    assert all(schema["columns"][c]["kind"] == "categorical" for c in schema["features"])


def test_an_integer_coded_target_with_positive_label_2(tmp_path_factory):
    run = _run(tmp_path_factory, "lung_cancer")
    schema = _assert_a_users_run(run)
    assert (schema["task"], schema["positive_label"]) == ("binary", 2)
    eda = read_json(run["run_dir"] / "eda.json")
    assert any(c["check"] == "missing" or "missing" in c["message"] for c in eda["checks"]) or eda["metrics"]["max_missing_share"] > 0
