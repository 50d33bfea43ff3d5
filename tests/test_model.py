"""Baseline and evaluation stages end to end (papermill), against a real MLflow store: registration, loading,
gates, champion comparison, reference statistics and the sha256 check."""
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import papermill as pm
import pytest
from mlflow.exceptions import MlflowException
from sklearn.metrics import roc_auc_score

from conftest import NBS, read_json, write_config
from mlops_nb.models import model_columns, target_vector
from mlops_nb.core import jsonable, load_config, mlflow_client
from mlops_nb.eda import reference_statistics
from mlops_nb.evaluation import (CHALLENGER, CHAMPION, REFERENCE_STATS, REFERENCE_STATS_PATH, SHA256_TAG, ModelIntegrityError,
                                 fit_model, load_model_version, positive_scores)
from mlops_nb.pipeline import STAGES, render_html

# Small and quick: 1,500 rows, 3 folds, one candidate per run; fairness gates lenient so only the gate under test decides.
COMMON = {"data": {"sample_rows": 1500}, "model": {"cv_folds": 3}}
LENIENT = {"min_primary_metric": 0.5, "min_lift_over_baseline": None, "min_lift_over_champion": -1.0,
           "max_demographic_parity_difference": 1.0, "max_equalized_odds_difference": 1.0}


def _run_stage(notebook: str, config: Path, run_dir: Path) -> Path:
    "Execute a stage notebook with injected parameters (as the pipeline does); return the executed notebook."
    out = run_dir.parent / Path(notebook).name
    pm.execute_notebook(str(NBS / notebook), str(out), parameters={"CONFIG": str(config), "RUN_DIR": str(run_dir)},
                        kernel_name="python3", progress_bar=False, cwd=str(run_dir.parent))
    return out


def _evaluate(root: Path, name: str, candidates: list[str], gates: dict, with_baseline: bool = False) -> dict:
    "One evaluation run (optionally after the baseline stage) in its own run folder, sharing the store under root."
    folder = root / name; folder.mkdir()
    config = write_config(folder, data=COMMON["data"], model={**COMMON["model"], "candidates": candidates}, gates=gates,
                          tracking={"uri": f"sqlite:///{root / 'mlruns.db'}"})
    run_dir = folder / "run"
    if with_baseline: _run_stage("03_baseline.ipynb", config, run_dir)
    nb = _run_stage("04_evaluation.ipynb", config, run_dir)
    return {"config": config, "cfg": load_config(config), "run_dir": run_dir, "notebook": nb,
            "results": read_json(run_dir / "evaluation.json")}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Run A (logistic regression, lenient gates) -> version 1, made champion by hand; then run B (random forest,
    an impossible primary-metric gate) in the same store -> version 2, compared with the champion."""
    if "evaluation" in STAGES: print("note: the pipeline has the evaluation stage; these tests still run the notebooks directly")
    root = tmp_path_factory.mktemp("model")
    a = _evaluate(root, "a", ["logistic_regression"], LENIENT, with_baseline=True)
    client = mlflow_client(a["cfg"].tracking.uri)
    client.set_registered_model_alias(a["cfg"].model_name, CHAMPION, a["results"]["model"]["version"])
    b = _evaluate(root, "b", ["random_forest"], {**LENIENT, "min_primary_metric": 0.999})
    return {"a": a, "b": b, "client": client, "name": a["cfg"].model_name, "uri": a["cfg"].tracking.uri}


def _split(run: dict, part: str) -> pd.DataFrame:
    return pd.read_parquet(run["run_dir"] / "cache" / f"{part}.parquet")


def _schema(run: dict) -> dict:
    return read_json(run["run_dir"] / "cache" / "schema.json")


def test_first_version_passes_and_is_challenger(registry):
    a, client = registry["a"], registry["client"]
    s = a["results"]["summary"]
    assert all(g["passed"] for g in s["gates"]) and s["model"]["version"] == 1 and CHALLENGER in s["model"]["aliases"]
    assert "min_lift_over_champion" not in [g["name"] for g in s["gates"]]  # no champion existed then
    assert {g["name"] for g in s["gates"]} >= {"min_primary_metric", "max_demographic_parity_difference[colour]",
                                               "max_equalized_odds_difference[sex]", "max_missing_share"}
    # the baseline stage ran first: evaluation used its baseline.json
    assert s["metrics"]["baseline_roc_auc"] == read_json(a["run_dir"] / "baseline.json")["baseline"]["best_score"]
    assert set(s["metrics"]) >= {"test_roc_auc", "test_average_precision", "test_f1", "test_accuracy", "test_log_loss", "cv_roc_auc"}
    assert set(s["fairness"]) == {"colour", "sex"}
    mv = client.get_model_version(registry["name"], "1")
    assert mv.tags["mlops_nb.gates_passed"] == "true" and json.loads(mv.tags["mlops_nb.gates"]) == s["gates"]
    assert mv.tags["mlops_nb.gate.max_demographic_parity_difference.colour"] == "passed"


def test_pyfunc_model_predicts_like_the_in_memory_pipeline(registry, monkeypatch):
    a = registry["a"]
    train, test, schema = _split(a, "train"), _split(a, "test"), _schema(a)
    pipeline = fit_model(train, schema, a["cfg"], "logistic_regression")  # the same fit, in memory
    X = test[model_columns(schema)]
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])  # undone after the test, unlike mlflow.set_*_uri
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry["uri"])
    served = mlflow.pyfunc.load_model(f"models:/{registry['name']}/1")
    np.testing.assert_array_equal(np.asarray(served.predict(X)), pipeline.predict(X))
    loaded = load_model_version(registry["client"], registry["name"], "1")  # verified sklearn flavor
    np.testing.assert_array_equal(loaded.model.predict_proba(X), pipeline.predict_proba(X))
    with pytest.raises(MlflowException, match=r"missing inputs \['age'\]"):
        served.predict(X.drop(columns="age"))


def test_impossible_gate_registers_without_challenger_and_reports_the_failure(registry):
    b, client, name = registry["b"], registry["client"], registry["name"]
    s = b["results"]["summary"]
    failing = [g for g in s["gates"] if not g["passed"]]
    assert [g["name"] for g in failing if g["name"] == "min_primary_metric"] == ["min_primary_metric"]
    gate = next(g for g in failing if g["name"] == "min_primary_metric")
    assert gate["threshold"] == 0.999 and gate["value"] == s["metrics"]["test_roc_auc"] < 0.999
    assert s["model"]["version"] == 2 and CHALLENGER not in s["model"]["aliases"]
    mv = client.get_model_version(name, "2")
    assert CHALLENGER not in mv.aliases and mv.tags["mlops_nb.gates_passed"] == "false"
    assert mv.tags["mlops_nb.gate.min_primary_metric"] == "failed"
    assert CHALLENGER in client.get_model_version(name, "1").aliases  # the earlier challenger is untouched
    html = render_html(b["notebook"], b["notebook"].with_suffix(".html")).read_text()
    assert "min_primary_metric" in html and "FAIL" in html and "without" in html
    assert "min_primary_metric" in b["notebook"].read_text()


def test_lift_over_champion_uses_the_real_champion_on_the_same_test_split(registry, monkeypatch):
    b = registry["b"]
    test, schema = _split(b, "test"), _schema(b)
    # the champion (version 1), loaded independently of mlops_nb's loader, scored on run B's test split
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])  # undone after the test, unlike mlflow.set_*_uri
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry["uri"])
    champion = mlflow.sklearn.load_model(f"models:/{registry['name']}@{CHAMPION}")
    champion_auc = roc_auc_score(target_vector(test, b["cfg"]), champion.predict_proba(test[model_columns(schema)])[:, 1])
    s = b["results"]["summary"]
    gate = next(g for g in s["gates"] if g["name"] == "min_lift_over_champion")
    assert gate["value"] == pytest.approx(s["metrics"]["test_roc_auc"] - champion_auc, abs=1e-12)
    assert gate["value"] != 0  # a different model: a real comparison, not the model against itself
    assert s["metrics"]["champion_roc_auc"] == pytest.approx(champion_auc, abs=1e-12)
    assert b["results"]["champion"]["version"] == "1"


def test_reference_statistics_stored_with_the_version_match_the_training_split(registry):
    a, client = registry["a"], registry["client"]
    loaded = load_model_version(client, registry["name"], CHAMPION)
    train, schema = _split(a, "train"), _schema(a)
    scores = positive_scores(loaded.model, train[model_columns(schema)])
    expected = json.loads(json.dumps(jsonable(reference_statistics(train, schema, scores=scores, seed=a["cfg"].split.seed))))
    stored = loaded.reference_stats()
    assert stored.pop("threshold") == 0.5  # the decision threshold the version was registered with (model.threshold)
    assert stored == expected
    assert stored["rows"] == len(train) and stored["prediction"]["count"] == len(train)
    assert loaded.tags["mlops_nb.reference_stats"] == REFERENCE_STATS_PATH
    run_copy = client.download_artifacts(a["results"]["model"]["run_id"], REFERENCE_STATS, str(a["run_dir"]))
    assert read_json(run_copy) == {**expected, "threshold": 0.5}


def test_a_tampered_model_file_is_refused_with_the_model_uri(registry):
    client, name = registry["client"], registry["name"]
    local = Path(client.get_model_version_download_uri(name, "1").removeprefix("file://"))
    recorded = {k.removeprefix(SHA256_TAG) for k in client.get_model_version(name, "1").tags if k.startswith(SHA256_TAG)}
    assert {"MLmodel", "model.skops", REFERENCE_STATS_PATH} <= recorded
    target = local / "model.skops"
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\0")
        with pytest.raises(ModelIntegrityError, match=rf"models:/{name}/1.*model\.skops changed"):
            load_model_version(client, name, "1")
    finally:
        target.write_bytes(original)
    load_model_version(client, name, "1")  # restored: loads again
