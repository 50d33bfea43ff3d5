"""Monitoring: drift scores equal scipy's, dataset drift, decisions (minimum size, cooldown), estimated vs measured
performance, bad batches, the inference log and its labels; a batch's report is the executed monitoring notebook
(`mlops-nb monitor`), and in a training run the notebook is the baseline of the run's version; binary, multiclass and
regression versions monitored. Real MLflow store in tmp_path, seeded synthetic data and data that packages ship."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from conftest import read_json, registered_project, run_cli, write_config
from mlops_nb.models import build_pipeline, model_columns, target_vector
from mlops_nb.core import ConfigError, DataValidationError, MlopsError, apply_task, load_config, run_context
from mlops_nb.eda import QUANTILE_LEVELS, load_data, reference_statistics
from mlops_nb.evaluation import decisions, log_model, positive_scores, register_version
from mlops_nb.monitoring import (append_inference_log, dataset_drift, drift_report, join_labels, monitor_batch,
                                 read_inference_log, retraining_decision, wasserstein_drift)

NUMERIC, CATEGORICAL = ["x1", "x2", "x3"], ["c1", "c2"]


def synthetic(n: int, seed: int, x2_shift: float = 0.0, c1_p=(0.5, 0.3, 0.2)) -> pd.DataFrame:
    "Rows whose outcome follows a logistic model of x1, x2 and c1 (x3 and c2 are noise)."
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x1": rng.normal(0, 1, n), "x2": rng.normal(5, 2, n) + x2_shift, "x3": rng.uniform(0, 10, n),
                       "c1": rng.choice(["a", "b", "c"], n, p=list(c1_p)), "c2": rng.choice(["u", "v"], n)})
    logit = 1.5 * df.x1 + 0.3 * (df.x2 - x2_shift - 5) + np.where(df.c1 == "a", 1.0, -0.5)
    df["y"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return df


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "A logistic regression trained on 800 synthetic rows, registered with its reference statistics in a real MLflow store."
    folder = tmp_path_factory.mktemp("monitoring")
    synthetic(800, seed=0).to_csv(folder / "reference.csv", index=False)
    config = write_config(folder, data={"source": "reference.csv", "target": "y", "positive_label": "yes", "sensitive_features": ["c2"],
                                        "time_column": None, "missing_values": []})
    ctx = run_context(config, folder / "run")
    ref, schema = load_data(ctx)
    X = ref[model_columns(schema)]
    pipeline = build_pipeline(schema, "logistic_regression").fit(X, target_vector(ref, ctx.config))
    reference = reference_statistics(ref, schema, scores=positive_scores(pipeline, X))
    model = register_version(ctx, log_model(ctx, pipeline, X, reference), gates=[])
    return SimpleNamespace(folder=folder, config=config, cfg=ctx.config, ref=ref, pipeline=pipeline, model=model,
                           client=MlflowClient(tracking_uri=ctx.tracking_uri))


def test_batch_sampled_from_the_reference_does_not_drift(project, tmp_path):
    batch = project.ref.sample(400, random_state=1).reset_index(drop=True)
    d = monitor_batch(project.cfg, batch, out=tmp_path, batch_id="same")
    assert d["decision"] == "ok" and d["dataset_drift"] is False and d["drift_share"] == 0.0
    assert {c: v["test"] for c, v in d["columns"].items()} == {"x1": "ks", "x2": "ks", "x3": "ks", "c1": "chisquare", "c2": "chisquare"}
    assert d["prediction_drift"]["drifted"] is False and d["anomalies"] == {}
    assert d["model"]["version"] == project.model["version"]  # the challenger, as there is no champion
    assert read_json(tmp_path / "monitoring" / "same" / "decision.json") == d


def test_two_shifted_columns_drift_and_scores_equal_scipy(project, tmp_path):
    batch = synthetic(400, seed=5, x2_shift=3.0, c1_p=(0.2, 0.3, 0.5)).drop(columns="y")
    d = monitor_batch(project.cfg, batch, out=tmp_path, batch_id="shifted")
    assert sorted(c for c, v in d["columns"].items() if v["drifted"]) == ["c1", "x2"]
    assert d["drift_share"] == 0.4 and d["dataset_drift"] is False and d["decision"] != "retrain"
    ref = project.ref
    for c in NUMERIC:  # the reference has 800 rows: its stored sample is the whole column, so KS is exact
        assert d["columns"][c]["score"] == ks_2samp(ref[c], batch[c]).pvalue
    for c in CATEGORICAL:
        table = pd.crosstab(np.r_[np.zeros(len(ref)), np.ones(len(batch))], np.r_[ref[c], batch[c]]).to_numpy()
        assert d["columns"][c]["score"] == chi2_contingency(table).pvalue
    assert all(v["drifted"] == (v["score"] < 0.05) for v in d["columns"].values())
    assert d["anomalies"]["x2"]["out_of_range"]["rows"] == int((batch.x2 > ref.x2.max()).sum()) > 0
    run = project.client.get_run(d["mlflow_run_id"])
    assert run.data.tags["mlops_nb.kind"] == "monitoring" and run.data.metrics["drift_share"] == 0.4
    assert run.data.tags["mlops_nb.decision"] == d["decision"]
    assert [p.name for p in (tmp_path / "monitoring" / "shifted").iterdir()] == ["decision.json"]  # the report is the notebook's


def test_large_reference_uses_distances_that_match_scipy_on_raw_data():
    "Against more than 1,000 reference rows, a batch of at least 1,000 values is judged by distances (fewer: p-values)."
    ref, batch = synthetic(5000, seed=1), synthetic(1200, seed=2, x2_shift=0.8, c1_p=(0.4, 0.3, 0.3))
    ref["x3"] = np.random.default_rng(3).exponential(2.0, 5000)  # a skewed column too
    batch["x3"] = np.random.default_rng(4).exponential(2.4, 1200)
    schema = {"features": NUMERIC + CATEGORICAL, "target": "y",
              "columns": {**{c: {"kind": "numeric"} for c in NUMERIC}, **{c: {"kind": "categorical"} for c in CATEGORICAL}}}
    stats = reference_statistics(ref, schema)
    small = drift_report(batch.head(999), stats).test.to_dict()
    assert small == {"x1": "ks", "x2": "ks", "x3": "ks", "c1": "chisquare", "c2": "chisquare"}
    report = drift_report(batch, stats)
    assert report.test.to_dict() == {"x1": "wasserstein", "x2": "wasserstein", "x3": "wasserstein", "c1": "jensenshannon", "c2": "jensenshannon"}
    for c in NUMERIC:
        assert abs(report.loc[c, "score"] - wasserstein_distance(ref[c], batch[c]) / np.std(ref[c])) < 0.005, c
    for c in CATEGORICAL:
        cats = sorted(set(ref[c]) | set(batch[c]))
        p, q = (s[c].value_counts(normalize=True).reindex(cats, fill_value=0) for s in (ref, batch))
        assert report.loc[c, "score"] == pytest.approx(jensenshannon(p, q), abs=1e-12)
    assert report.drifted.to_dict() == (report.score >= 0.1).to_dict()
    assert report.loc["x2", "drifted"] and not report.loc["x1", "drifted"]


def test_small_batch_investigates_never_retrains(project, tmp_path):
    batch = synthetic(60, seed=7, x2_shift=5.0, c1_p=(0.05, 0.05, 0.9))
    batch["x1"] += 3; batch["x3"] += 20; batch["c2"] = "u"
    d = monitor_batch(project.cfg, batch, labels=True, out=tmp_path, batch_id="tiny")
    assert d["dataset_drift"] is True and d["decision"] == "investigate"
    assert "min_batch_rows=200" in d["reasons"][0] and any(r.startswith("dataset drift") for r in d["reasons"])


def test_cooldown_blocks_a_second_retrain(project, tmp_path):
    cfg = load_config(project.config, ["monitoring.min_batch_rows=100"])
    drifted = synthetic(300, seed=8, x2_shift=4.0, c1_p=(0.1, 0.1, 0.8)).assign(x1=lambda d: d.x1 + 2)
    first = monitor_batch(cfg, drifted, out=tmp_path, batch_id="b1")
    assert first["decision"] == "retrain" and first["dataset_drift"] is True
    second = monitor_batch(cfg, drifted, out=tmp_path, batch_id="b2")
    assert second["decision"] == "investigate" and "retrain_cooldown_days=7" in second["reasons"][-1] and "b1" in second["reasons"][-1]
    # the history is also in MLflow: another reports folder is still within the cooldown
    third = monitor_batch(cfg, drifted, out=tmp_path / "elsewhere", batch_id="b3")
    assert third["decision"] == "investigate" and "b1" in third["reasons"][-1]
    no_cooldown = load_config(project.config, ["monitoring.min_batch_rows=100", "monitoring.retrain_cooldown_days=0"])
    assert monitor_batch(no_cooldown, drifted, out=tmp_path, batch_id="b4")["decision"] == "retrain"


def test_estimated_performance_is_close_to_measured_for_a_calibrated_model(project, tmp_path):
    batch = synthetic(3000, seed=11)
    d = monitor_batch(project.cfg, batch, labels=True, out=tmp_path, batch_id="labelled")
    assert d["labelled_rows"] == 3000 and d["performance"]["rows"] == 3000
    for k in ("accuracy", "f1", "precision", "recall", "roc_auc"):
        assert abs(d["estimated_performance"][k] - d["performance"][k]) < 0.03, (k, d["estimated_performance"][k], d["performance"][k])
    scores = positive_scores(project.pipeline, batch[NUMERIC + CATEGORICAL])
    assert d["estimated_performance"]["tp"] == pytest.approx(scores[decisions(scores) == 1].sum())  # expected TP = sum of p over predicted positives
    assert d["label_drift"]["test"] == "chisquare" and "performance" in d["assumptions"][0]


@pytest.mark.parametrize("change, message", [
    (lambda b: b.drop(columns=["x2", "c1"]), "x2: column is missing"),
    (lambda b: b.assign(x1="abc"), "x1: expected numbers, found ['abc']"),
    (lambda b: b.assign(x3=[np.inf] + [1.0] * (len(b) - 1)), "x3: infinite values in 1 row (rows 0)"),
    (lambda b: b.iloc[:0], "the batch has no rows"),
])
def test_bad_batches_are_refused_naming_the_problem(project, tmp_path, change, message):
    with pytest.raises(DataValidationError) as err:
        monitor_batch(project.cfg, change(project.ref.head(50).copy()), out=tmp_path, batch_id="bad")
    assert message in str(err.value)
    assert not (tmp_path / "monitoring" / "bad").exists()


def test_bad_batch_files_and_arguments(project, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataValidationError, match="the file is empty"): monitor_batch(project.cfg, tmp_path / "empty.csv", out=tmp_path)
    (tmp_path / "header.csv").write_text("x1,x2,x3,c1,c2\n")
    with pytest.raises(DataValidationError, match="no rows"): monitor_batch(project.cfg, tmp_path / "header.csv", out=tmp_path)
    with pytest.raises(DataValidationError, match="y: labels were requested"):
        monitor_batch(project.cfg, project.ref.drop(columns="y"), labels=True, out=tmp_path)
    with pytest.raises(ConfigError, match="unknown column"): monitor_batch(project.cfg, project.ref, methods={"x9": "psi"}, out=tmp_path)
    with pytest.raises(ConfigError, match="batch_id"): monitor_batch(project.cfg, project.ref, batch_id="../x", out=tmp_path)
    with pytest.raises(MlopsError, match="nope"): monitor_batch(project.cfg, project.ref, model="nope@champion", out=tmp_path)


LOG = """\
{"time": "2026-01-05T10:00:00.000Z", "request_id": "r1", "row": 0, "model_name": "m", "model_version": "3", "inputs": {"x1": 0.5, "c1": "a"}, "prediction": 1, "probability": 0.8, "latency_ms": 3.5, "status": 200, "unseen_categories": []}
{"time": "2026-01-05T10:00:00.000Z", "request_id": "r1", "row": 1, "model_name": "m", "model_version": "3", "inputs": {"x1": -1.0, "c1": "zzz"}, "prediction": 0, "probability": 0.2, "latency_ms": 3.5, "status": 200, "unseen_categories": ["c1"]}

{"time": "2026-01-06T08:30:00+01:00", "request_id": "r2", "row": 0, "model_name": "m", "model_version": "4", "inputs": {"x1": 2.0, "c1": "b"}, "prediction": 1, "probability": 0.9, "latency_ms": 2.0, "status": 200, "unseen_categories": []}
"""


def test_inference_log_reader_and_labels(tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "a.jsonl").write_text(LOG)
    (tmp_path / "log" / "b.jsonl").write_text('{"time": "2026-01-07T00:00:00Z", "request_id": "r3", "inputs": {"x1": 1.0, "c1": "c"}, "status": 422}\n')
    log = read_inference_log(tmp_path / "log")
    assert list(log.columns[:2]) == ["x1", "c1"] and len(log) == 4
    assert log.x1.tolist() == [0.5, -1.0, 2.0, 1.0] and log.c1.tolist() == ["a", "zzz", "b", "c"]
    assert log.request_id.tolist() == ["r1", "r1", "r2", "r3"] and log.row.tolist() == [0, 1, 0, 0]
    assert log.time[2] == pd.Timestamp("2026-01-06T07:30:00Z")  # converted to UTC
    assert log.probability.tolist()[:3] == [0.8, 0.2, 0.9] and log.model_version.tolist()[:3] == ["3", "3", "4"]
    assert log.unseen_categories[1] == ["c1"] and log.status.tolist() == [200, 200, 200, 422]
    assert read_inference_log(tmp_path / "log", since="2026-01-06", until="2026-01-07").request_id.tolist() == ["r2"]
    labels = pd.DataFrame({"request_id": ["r1", "r1", "r2"], "row": [0, 1, 0], "y": ["yes", "no", "no"]})
    joined = join_labels(log, labels, "y")
    assert joined.y.tolist()[:3] == ["yes", "no", "no"] and pd.isna(joined.y[3])  # r3's label has not arrived
    by_request = join_labels(log[log.request_id != "r1"], pd.DataFrame({"request_id": ["r2"], "y": ["yes"]}), "y")
    assert by_request.y.tolist()[0] == "yes"
    with pytest.raises(DataValidationError, match="scored several rows"): join_labels(log, labels.drop(columns="row").drop_duplicates("request_id"), "y")
    with pytest.raises(DataValidationError, match="duplicate label"): join_labels(log, pd.concat([labels, labels]), "y")
    (tmp_path / "broken.jsonl").write_text(LOG + "{not json\n")
    with pytest.raises(DataValidationError, match="broken.jsonl:5: not valid JSON"): read_inference_log(tmp_path / "broken.jsonl")


def test_monitoring_an_inference_log_with_late_labels_and_serving_skew(project, tmp_path):
    cfg, version = project.cfg, str(project.model["version"])
    batch = synthetic(300, seed=13)
    X = batch[NUMERIC + CATEGORICAL]
    p = positive_scores(project.pipeline, X)
    served = p.copy(); served[7] = min(served[7] + 0.05, 1.0)  # one response the registered model would not give
    log = tmp_path / "log" / "part-0.jsonl"
    for i in range(0, 300, 3):  # requests of three rows
        append_inference_log(log, X.iloc[i:i + 3], served[i:i + 3], decisions(served[i:i + 3]), f"req-{i}", cfg.model_name, version)
    append_inference_log(log, X.iloc[:5], p[:5], decisions(p[:5]), "other", cfg.model_name, "999")  # another version: ignored
    labels = pd.DataFrame({"request_id": [f"req-{i - i % 3}" for i in range(240)], "row": [i % 3 for i in range(240)], "y": batch.y[:240]})
    d = monitor_batch(cfg, labels, inference_log=log.parent, labels=True, out=tmp_path, batch_id="served")
    assert d["rows"] == 300 and d["labelled_rows"] == 240 and d["source"]["other_models"] == 5
    y = (batch.y[:240] == "yes").astype(int)
    assert d["performance"]["accuracy"] == pytest.approx(float((decisions(served[:240]) == y).mean()))
    assert d["serving_skew"]["mismatched_rows"] == 1 and d["serving_skew"]["max_abs_difference"] == pytest.approx(served[7] - p[7])
    assert d["decision"] == "investigate" and any("serving skew" in r for r in d["reasons"])
    with pytest.raises(ConfigError, match="pass the labels"): monitor_batch(cfg, inference_log=log, labels=True, out=tmp_path)
    with pytest.raises(ConfigError, match="the data is its labels"): monitor_batch(cfg, labels, inference_log=log, out=tmp_path)


def test_decision_rules_without_mlflow():
    cfg = apply_task(load_config(), "binary", "Yes")
    quiet = {"rows": 500, "columns": {"a": {"drifted": False}}, "drift_share": 0.0, "dataset_drift": False,
             "performance": {}, "estimated_performance": {"roc_auc": 0.8}, "anomalies": {}}
    assert retraining_decision(quiet, cfg)[0] == "ok"
    assert retraining_decision({**quiet, "rows": 10}, cfg)[0] == "investigate"
    assert retraining_decision({**quiet, "performance": {"roc_auc": 0.5}}, cfg)[0] == "retrain"
    assert retraining_decision({**quiet, "rows": 10, "performance": {"roc_auc": 0.5}}, cfg)[0] == "investigate"
    assert dataset_drift(pd.DataFrame({"drifted": [True, False]}), 0.5) == (True, 0.5)  # at the threshold is drift
    assert dataset_drift(pd.DataFrame({"drifted": [True, False, False]}), 0.5)[0] is False


def _lognormal_pair(n: int = 100_000):
    rng = np.random.default_rng(7)
    return pd.DataFrame({"x": rng.lognormal(0, 1, n), "y": "yes"}), pd.DataFrame({"x": rng.lognormal(0.3, 1, n)})


SKEWED = {"features": ["x"], "target": "y", "columns": {"x": {"kind": "numeric"}}}



def _unshifted(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    "Columns shaped like real ones: normal, skewed, integer counts; 12 and 20 uneven categories (`shift`: all moved)."
    def zipf(k: int, s: float) -> np.ndarray:
        p = 1 / np.arange(1, k + 1) ** s
        return p / p.sum()
    return pd.DataFrame({"x1": rng.normal(0, 1, n) + shift, "x2": rng.lognormal(0, 0.5, n) * (1 + shift),
                         "x3": rng.poisson(30, n) + 5.5 * shift,
                         "c1": rng.choice([f"a{i}" for i in range(12)], n, p=zipf(12, 1.0)[::-1 if shift else 1]),
                         "c2": rng.choice([f"b{i:02d}" for i in range(20)], n, p=zipf(20, 1.5)[::-1 if shift else 1])})


@pytest.fixture(scope="module")
def large_reference():
    rng = np.random.default_rng(18)
    ref = _unshifted(100_000, rng)
    schema = {"features": list(ref.columns), "target": "y",
              "columns": {c: {"kind": "numeric" if c.startswith("x") else "categorical"} for c in ref.columns}}
    return reference_statistics(ref.assign(y=1), schema), rng


@pytest.mark.parametrize("rows", [100, 300])
def test_small_batches_against_a_large_reference_raise_few_false_alarms_and_see_a_real_shift(large_reference, rows):
    """Unshifted batches of 100 and 300 rows against 100,000 reference rows: at most 7% of the columns flagged (a
    p-value test at 0.05 flags 5% by construction; 7% leaves two standard deviations of 500 draws), none above 12%
    alone, no dataset drift; the distances at their 0.1 flag far more on the same batches (what this rule replaced).
    A batch with every column clearly moved is caught almost every time."""
    stats, rng = large_reference
    distances = {**dict.fromkeys(["x1", "x2", "x3"], "wasserstein"), **dict.fromkeys(["c1", "c2"], "jensenshannon")}
    ours, old = [], []
    for _ in range(100):
        batch = _unshifted(rows, rng)
        ours.append(drift_report(batch, stats))
        old.append(drift_report(batch, stats, methods=distances).drifted)
    assert set(ours[0].test) == {"ks", "chisquare"}
    flagged = pd.concat([r.drifted for r in ours], axis=1).mean(axis=1)
    assert flagged.mean() <= 0.07 and flagged.max() <= 0.12, flagged.to_dict()
    assert not any(dataset_drift(r, 0.5)[0] for r in ours)
    assert pd.concat(old, axis=1).mean(axis=1).mean() > 0.15  # the test can fail: the old rule's false alarms
    shifted = [drift_report(_unshifted(rows, rng, shift=0.5), stats).drifted for _ in range(20)]
    caught = pd.concat(shifted, axis=1).mean(axis=1)
    assert caught.min() >= 0.9, caught.to_dict()

def test_tail_quantile_levels_make_the_wasserstein_score_exact_on_a_skewed_column():
    ref, batch = _lognormal_pair()
    stats = reference_statistics(ref, SKEWED)
    assert stats["quantile_level_values"] == QUANTILE_LEVELS.tolist() and len(stats["columns"]["x"]["quantiles"]) == 1011
    exact = wasserstein_distance(ref.x, batch.x) / np.std(ref.x)
    even = np.linspace(0, 1, 1001)
    assert abs(wasserstein_drift({**stats["columns"]["x"], "quantiles": np.quantile(ref.x, even).tolist(), "quantile_level_values": even},
                                 batch.x) - exact) > 0.001  # the 1,001 even levels alone: the tail is overstated
    assert abs(drift_report(batch, stats).loc["x", "score"] - exact) < 0.001


def test_a_reference_stored_before_the_tail_levels_is_read_with_even_levels():
    ref, batch = _lognormal_pair(20_000)
    stats = reference_statistics(ref, SKEWED)
    even = np.linspace(0, 1, 1001)
    old = {**{k: v for k, v in stats.items() if k not in ("quantile_level_values", "quantile_levels")}, "quantile_levels": 1001,
           "columns": {"x": {**stats["columns"]["x"], "quantiles": np.quantile(ref.x, even).tolist()}}}
    assert "quantile_level_values" not in old and "quantile_level_values" not in old["columns"]["x"]
    from mlops_nb.monitoring import _wasserstein_from_quantiles
    expected = _wasserstein_from_quantiles(even, np.quantile(ref.x, even), batch.x.to_numpy()) / (ref.x.std() * np.sqrt((len(ref) - 1) / len(ref)))
    report = drift_report(batch, old, methods={"x": "wasserstein"})
    assert report.loc["x", "score"] == pytest.approx(expected, rel=1e-12)
    for test in ("jensenshannon", "psi"):  # the old evenly weighted picture of the reference: same scores as before the change
        q = np.asarray(old["columns"]["x"]["quantiles"])
        w = np.ones(1001); w[[0, -1]] = 0.5
        edges = np.histogram_bin_edges([ref.x.min(), ref.x.max(), batch.x.min(), batch.x.max()], bins=10)
        p, r = np.histogram(q, edges, weights=w)[0] / w.sum(), np.histogram(batch.x, edges)[0] / len(batch)
        want = jensenshannon(p, r) if test == "jensenshannon" else float(np.sum((np.where(r == 0, 1e-4, r) - np.where(p == 0, 1e-4, p)) * np.log(np.where(r == 0, 1e-4, r) / np.where(p == 0, 1e-4, p))))
        assert drift_report(batch, old, methods={"x": test}).loc["x", "score"] == pytest.approx(want, rel=1e-9), test


def _same_assessment(a: dict, b: dict) -> None:
    "Two decisions of the same rows: the same decision, columns, drift, anomalies and performance (scores within 1e-9)."
    assert (a["decision"], a["rows"], a["labelled_rows"], a["dataset_drift"], a["anomalies"]) == (b["decision"], b["rows"], b["labelled_rows"], b["dataset_drift"], b["anomalies"])
    assert {c: (v["test"], v["drifted"]) for c, v in a["columns"].items()} == {c: (v["test"], v["drifted"]) for c, v in b["columns"].items()}
    assert all(abs(a["columns"][c]["score"] - v["score"]) < 1e-9 for c, v in b["columns"].items())
    for k in ("prediction_drift", "label_drift"): assert a[k]["drifted"] == b[k]["drifted"] and abs(a[k]["score"] - b[k]["score"]) < 1e-9
    for k in ("performance", "estimated_performance"): assert a[k] == pytest.approx(b[k], abs=1e-9)


def test_a_parquet_batch_is_monitored_in_chunks_with_the_frame_results(project, tmp_path, monkeypatch):
    batch = synthetic(700, seed=8, x2_shift=1.0)
    batch.to_parquet(tmp_path / "batch.parquet", index=False)
    whole = monitor_batch(project.cfg, batch, labels=True, out=tmp_path / "a", batch_id="whole")
    import mlops_nb.monitoring as monitoring
    monkeypatch.setattr(monitoring, "read_batch", lambda *a, **k: pytest.fail("a Parquet batch must not be read whole"))
    chunked = monitor_batch(project.cfg, tmp_path / "batch.parquet", labels=True, out=tmp_path / "b", batch_id="chunked", batch_rows=64)
    _same_assessment(chunked, whole)
    assert chunked["source"] == {"kind": "data", "path": str(tmp_path / "batch.parquet")}


def test_a_bad_parquet_batch_is_refused_with_the_row_numbers_of_the_whole_file(project, tmp_path):
    batch = project.ref.head(300).copy()
    batch.loc[[5, 250], "x3"] = np.inf
    batch.loc[260, "y"] = "maybe"
    batch.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(DataValidationError) as err:
        monitor_batch(project.cfg, tmp_path / "bad.parquet", labels=True, out=tmp_path, batch_id="bad", batch_rows=100)
    assert "x3: infinite values in 2 rows (rows 5, 250)" in str(err.value)
    assert "y: unknown classes ['maybe'] in 1 row (rows 260)" in str(err.value)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataValidationError, match="broken.parquet: cannot be read"): monitor_batch(project.cfg, tmp_path / "broken.parquet", out=tmp_path)
    with pytest.raises(ConfigError, match="batch file not found"): monitor_batch(project.cfg, tmp_path / "absent.parquet", out=tmp_path)
    project.ref.head(0).to_parquet(tmp_path / "empty.parquet", index=False)
    with pytest.raises(DataValidationError, match="the batch has no rows"): monitor_batch(project.cfg, tmp_path / "empty.parquet", out=tmp_path)
    assert not (tmp_path / "monitoring" / "bad").exists()


def test_monitoring_and_eda_import_no_plotting_fairness_or_model_selection():
    "The service and `mlops-nb monitor` import these modules: fairlearn, matplotlib, shap and model selection load only when used."
    import subprocess, sys
    heavy = ["fairlearn", "matplotlib.pyplot", "shap", "sklearn.model_selection", "mlops_nb.rai", "mlops_nb.evaluation"]
    code = f"import sys, mlops_nb.monitoring, mlops_nb.eda; print([m for m in {heavy!r} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def _old_append_inference_log(path, inputs, probabilities, predictions, request_id, model_name="", model_version="", latency_ms=None,
                              status=200, unseen_categories=None, now=None):
    "The writer before the vectorised one: one record dict per row, `jsonable` on every value, `json.dumps` per line."
    from mlops_nb.core import jsonable
    from mlops_nb.monitoring import inference_log_record
    unseen = unseen_categories or [[] for _ in range(len(inputs))]
    lines = [json.dumps(jsonable(inference_log_record(r, d, p, request_id, i, model_name, model_version, latency_ms, status, u, now)))
             for i, (r, p, d, u) in enumerate(zip(inputs.to_dict("records"), probabilities, predictions, unseen))]
    with open(path, "a", encoding="utf-8") as f: f.write("".join(line + "\n" for line in lines))


def test_the_inference_log_lines_are_those_of_the_old_writer(tmp_path):
    import datetime as dt
    rows = pd.DataFrame({"i": np.array([1, 2, 3], dtype=np.int64), "f": [0.1 + 0.2, np.nan, 2.0 ** -40], "inf": [np.inf, -np.inf, 1.5],
                         "s": ["a", None, "é \"q\""], "o": pd.Series([np.int64(7), np.float64(2.5), None], dtype=object),
                         "b": [True, False, True], "when": pd.to_datetime(["2026-01-01 00:00:00", "2026-01-02 03:04:05", "2026-01-03 00:00:00"])})
    args = dict(probabilities=np.array([0.25, 1 / 3, np.nan]), predictions=np.array([0, 1, 0]), request_id="r-1", model_name="m",
                model_version=3, latency_ms=np.float64(12.5), status=200, unseen_categories=[[], ["s"], []])
    append_inference_log(tmp_path / "new.jsonl", rows, **args)
    new = (tmp_path / "new.jsonl").read_text().splitlines()
    now = dt.datetime.fromisoformat(json.loads(new[0])["time"])
    _old_append_inference_log(tmp_path / "old.jsonl", rows, **args, now=now)
    assert new == (tmp_path / "old.jsonl").read_text().splitlines()  # byte for byte
    assert json.loads(new[0])["inputs"]["f"] == 0.1 + 0.2 and json.loads(new[2])["inputs"]["f"] == 2.0 ** -40  # full precision
    assert json.loads(new[0])["inputs"]["inf"] is None and json.loads(new[2])["probability"] is None
    pd.testing.assert_frame_equal(read_inference_log(tmp_path / "new.jsonl"), read_inference_log(tmp_path / "old.jsonl"))
    assert append_inference_log(tmp_path / "empty.jsonl", rows.iloc[:0], [], [], "r-2") == 0
    assert append_inference_log(tmp_path / "nocols.jsonl", pd.DataFrame(index=range(2)), [0.5, 0.5], [1, 1], "r-3") == 2


# --- `mlops-nb monitor`: the batch's report is the executed monitoring notebook ---------------------------------------

DECISION_KEYS = {"decision", "reasons", "batch_id", "time", "model", "source", "rows", "reference_rows", "task", "dataset_drift",
                 "drift_share", "drift_share_threshold", "columns", "excluded_columns", "prediction_drift", "label_drift",
                 "anomalies", "performance", "labelled_rows", "estimated_performance", "assumptions", "serving_skew",
                 "mlflow_run_id", "unmonitored_columns"}


@pytest.fixture(scope="module")
def monitored(project):
    "Three batches through `mlops-nb monitor`: one with a hostile category (investigate), one drifted (retrain), one bad."
    folder = project.folder
    project.ref.head(250).assign(c1=["<script>alert(1)</script>"] + ["a"] * 249).to_csv(folder / "xss.csv", index=False)
    synthetic(300, seed=8, x2_shift=4.0, c1_p=(0.1, 0.1, 0.8)).assign(x1=lambda d: d.x1 + 2).to_csv(folder / "drifted.csv", index=False)
    project.ref.head(250).drop(columns=["x2"]).to_csv(folder / "bad.csv", index=False)
    run = lambda *args: run_cli("monitor", "--config", project.config, *args, cwd=folder, timeout=600)
    return {"xss": run(folder / "xss.csv", "--labels", "--batch-id", "xss"),
            "drifted": run(folder / "drifted.csv", "--batch-id", "drifted", "--set", "monitoring.min_batch_rows=100",
                       "--set", "monitoring.retrain_cooldown_days=0"),
            "bad": run(folder / "bad.csv", "--batch-id", "bad"),
            "reports": folder / "reports"}


def test_a_batch_report_is_the_executed_notebook(project, monitored):
    proc, batch_dir = monitored["xss"], monitored["reports"] / "monitoring" / "xss"
    assert proc.returncode == 5, proc.stderr  # investigate: an unseen category
    assert {p.name for p in batch_dir.iterdir()} == {"config.yaml", "decision.json", "monitoring.ipynb", "monitoring.html"}
    d = read_json(batch_dir / "decision.json")
    assert set(d) == DECISION_KEYS and d["decision"] == "investigate" and d["labelled_rows"] == 250
    assert d["anomalies"]["c1"]["unseen_categories"]["rows"] == 1 and d["model"]["version"] == project.model["version"]
    html = (batch_dir / "monitoring.html").read_text()
    assert f"models:/{project.cfg.model_name}/{project.model['version']}" in html
    assert html.count('src="data:image/png;base64,') >= 1 and "Decision: investigate" in html
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://cdn" not in html
    import nbformat
    from mlops_nb.pipeline import is_check_cell
    nb = nbformat.read(batch_dir / "monitoring.ipynb", as_version=4)
    assert not any(is_check_cell(c) for c in nb.cells)  # the checks stay out of a user's batch
    injected = [c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])][0]
    assert "BATCH_ID = \"xss\"" in injected and "LABELS = True" in injected
    artifacts = {a.path for a in project.client.list_artifacts(d["mlflow_run_id"])}
    assert artifacts >= {"decision.json", "monitoring.html", "monitoring.ipynb"}
    assert 'href="monitoring/xss/monitoring.html"' in (monitored["reports"] / "index.html").read_text()


def test_monitor_exit_codes_follow_the_decision(monitored):
    assert monitored["drifted"].returncode == 6, monitored["drifted"].stderr
    d = read_json(monitored["reports"] / "monitoring" / "drifted" / "decision.json")
    assert d["decision"] == "retrain" and d["dataset_drift"] and d["labelled_rows"] == 0 and d["performance"] == {}
    assert "decision: retrain" in monitored["drifted"].stderr


def test_a_bad_batch_exits_4_and_leaves_the_notebook_with_its_banner(monitored):
    proc, batch_dir = monitored["bad"], monitored["reports"] / "monitoring" / "bad"
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines() == ["error: x2: column is missing from the batch (the model needs it)"]
    assert not (batch_dir / "decision.json").exists()
    html = (batch_dir / "monitoring.html").read_text()
    assert 'Stage "monitoring" failed.' in html and "x2: column is missing" in html
    assert "mlops-nb-failure" in (batch_dir / "monitoring.ipynb").read_text()
    assert f"report: {batch_dir / 'monitoring.html'}" in proc.stdout


def test_monitor_refuses_bad_arguments_before_running_the_notebook(project, tmp_path):
    proc = run_cli("monitor", "--config", project.config, tmp_path / "absent.csv", "--batch-id", "absent", cwd=tmp_path)
    assert proc.returncode == 2 and "batch file not found" in proc.stderr
    assert not (tmp_path / "reports" / "monitoring" / "absent").exists()
    proc = run_cli("monitor", "--config", project.config, project.folder / "reference.csv", "--since", "someday", cwd=tmp_path)
    assert proc.returncode == 2 and "--since: not a date/time" in proc.stderr


def test_monitoring_in_a_training_run_is_the_baseline_of_the_runs_version(project):
    "The stage notebook, as the pipeline executes it, on a run whose evaluation registered a version."
    from mlops_nb.pipeline import STAGES, execute_stage, notebooks_dir, render_html
    run_dir = project.folder / "run"
    (run_dir / "evaluation.json").write_text(json.dumps({"model": {"version": project.model["version"]}}))
    out_nb = run_dir / "monitoring.ipynb"
    error = execute_stage("monitoring", notebooks_dir() / STAGES["monitoring"], out_nb,
                          {"CONFIG": str(project.config), "RUN_DIR": str(run_dir)})
    assert error is None, error
    html = render_html(out_nb, run_dir / "monitoring.html").read_text()
    assert f"Monitoring <strong>models:/{project.cfg.model_name}/{project.model['version']}</strong>" in html
    assert "unshifted resamples showed dataset drift" in html and "The test split monitored as a batch" in html
    results = read_json(run_dir / "monitoring.json")
    assert results["version"] == project.model["version"] and results["false_alarms"]["batch_rows"] == 200
    assert 0 <= results["false_alarms"]["dataset_drift_rate"] <= 1 and results["false_alarms"]["resamples"] == 50
    check = {r["metric"]: r for r in results["estimate_check"]}
    assert check["roc_auc"]["difference"] == pytest.approx(check["roc_auc"]["estimated"] - check["roc_auc"]["measured"])
    assert not (run_dir / "monitoring" / "test-split").exists()  # the test split's decision is shown, never recorded


# `make test-slow`: tests/test_real_data_tasks.py monitors a labelled wine and diabetes batch of a pipeline run in `make test`.
@pytest.mark.slow
@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_a_multiclass_and_a_regression_batch_are_monitored_with_their_labels(tmp_path, task):
    from sklearn.datasets import load_diabetes, load_wine
    loader, estimator = (load_wine, "logistic_regression") if task == "multiclass" else (load_diabetes, "ridge")
    frame = loader(as_frame=True).frame
    if task == "multiclass":
        frame["target"] = frame["target"].map({0: "class_0", 1: "class_1", 2: "class_2"})
    p = registered_project(tmp_path, frame, "target", estimator)
    assert p.cfg.data.task == task
    frame.sample(120, random_state=1).to_csv(tmp_path / "batch.csv", index=False)
    proc = run_cli("monitor", "--config", p.config, tmp_path / "batch.csv", "--labels", "--batch-id", "b",
                   "--set", "monitoring.min_batch_rows=50", cwd=tmp_path, timeout=600)
    assert proc.returncode in (0, 5), proc.stderr
    d = read_json(tmp_path / "reports" / "monitoring" / "b" / "decision.json")
    batch = pd.read_csv(tmp_path / "batch.csv")
    predicted = p.pipeline.predict(batch[list(p.pipeline.feature_names_in_)])
    assert d["task"] == task and d["labelled_rows"] == 120 and d["label_drift"] is not None and d["prediction_drift"] is not None
    html = (tmp_path / "reports" / "monitoring" / "b" / "monitoring.html").read_text()
    if task == "multiclass":
        assert d["performance"]["accuracy"] == pytest.approx(float((predicted == batch.target).mean()))
        assert set(d["estimated_performance"]) >= {"accuracy", "f1", "roc_auc", "balanced_accuracy", "log_loss"}
        assert d["prediction_drift"]["test"] == "chisquare"
    else:
        assert d["performance"]["rmse"] == pytest.approx(float(np.sqrt(np.mean((predicted - batch.target) ** 2))))
        assert d["estimated_performance"] == {} and "not estimated" in d["assumptions"][0]
        assert d["prediction_drift"]["test"] == "ks" and "not estimated" in html
    assert html.count('src="data:image/png;base64,') >= 1


# --- a private inference log: hashed and dropped columns (issue 19 item 3) --------------------------------------------

SALT = "a-secret-salt-for-the-tests"
PRIVATE = {"c1": "hash", "x2": "hash", "x3": "drop"}  # a hashed text column, a hashed number, a dropped number


def _private_config(project) -> Path:
    "The project's config with the service's log policy and salt variable (the log's own policy.json is what counts)."
    import yaml
    cfg = yaml.safe_load(Path(project.config).read_text())
    cfg["serving"] = {"log_columns": PRIVATE, "log_salt_env": "MLOPS_NB_TEST_LOG_SALT"}
    path = project.folder / "private.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _write_private_log(project, folder: Path, rows: pd.DataFrame) -> None:
    "Rows scored by the registered pipeline, written with the service's own log writer (log_lines, policy.json)."
    from mlops_nb.serving import LogPolicy, Outputs, Rows, log_lines, write_policy_record
    policy = LogPolicy(PRIVATE, salt=SALT.encode())
    X = rows[NUMERIC + CATEGORICAL]
    p = positive_scores(project.pipeline, X)
    outputs = Outputs("binary", decisions(p), np.column_stack([1 - p, p]), ("0", "1"))
    lines = log_lines(Rows({c: X[c].to_numpy() for c in X}, len(X)), outputs, "req-0", project.cfg.model_name,
                      str(project.model["version"]), policy=policy)
    write_policy_record(folder, policy)
    (folder / "part-0.jsonl").write_text("".join(line + "\n" for line in lines))


def test_a_private_log_is_monitored_on_its_hashes_and_says_what_a_dropped_column_costs(project, tmp_path, monkeypatch):
    from mlops_nb.pipeline import monitor_notebook
    rows = synthetic(300, seed=21, c1_p=(0.3, 0.3, 0.4))  # c1 moved a little: a score a wrong comparison would change
    _write_private_log(project, tmp_path / "private", rows)
    text = (tmp_path / "private" / "part-0.jsonl").read_text()
    assert '"x3"' not in text and '"c1": "a"' not in text and '"c1": "h:' in text  # what the service wrote
    X = rows[NUMERIC + CATEGORICAL]
    p = positive_scores(project.pipeline, X)
    append_inference_log(tmp_path / "plain" / "part-0.jsonl", X, p, decisions(p), "req-0", project.cfg.model_name,
                         str(project.model["version"]))
    plain = monitor_batch(project.cfg, inference_log=tmp_path / "plain", out=tmp_path / "plain-out", batch_id="plain")
    config = _private_config(project)
    monkeypatch.setenv("MLOPS_NB_TEST_LOG_SALT", SALT)
    d = monitor_notebook(config, inference_log=tmp_path / "private", out=tmp_path / "reports", batch_id="private")
    assert set(d["columns"]) == {"x1", "c1", "c2"} and set(plain["columns"]) == set(NUMERIC + CATEGORICAL)
    for c in ("x1", "c1", "c2"):  # the hashed text column: the same test and score as on the raw values
        assert d["columns"][c]["test"] == plain["columns"][c]["test"]
        assert d["columns"][c]["score"] == pytest.approx(plain["columns"][c]["score"], rel=1e-9, abs=1e-12), c
    assert d["unmonitored_columns"] == {"x3": "dropped from the inference log",
                                        "x2": "hashed numeric: its distribution is gone"}
    assert "c1" not in d["anomalies"] and d["anomalies"] == {}
    assert d["serving_skew"] is None and plain["serving_skew"]["mismatched_rows"] == 0  # the model cannot re-score
    assert d["prediction_drift"]["score"] == pytest.approx(plain["prediction_drift"]["score"], abs=1e-12)  # as logged
    assert any(r.startswith("not monitored: ") and "x3 (dropped from the inference log)" in r for r in d["reasons"])
    assert d["source"]["log_policy"]["actions"]["x3"] == "drop" and SALT not in json.dumps(d)
    html = (tmp_path / "reports" / "monitoring" / "private" / "monitoring.html").read_text()
    assert "dropped from the inference log" in html and "hashed numeric" in html and "Not monitored" in html
    assert "the model cannot re-score the log" in html  # the policy table's cost of each choice
    monkeypatch.setenv("MLOPS_NB_TEST_LOG_SALT", "not-the-salt-the-service-used")
    wrong = "serving.log_salt_env: the salt from the environment variable MLOPS_NB_TEST_LOG_SALT"
    with pytest.raises(ConfigError, match=wrong):
        monitor_notebook(config, inference_log=tmp_path / "private", out=tmp_path / "reports", batch_id="wrong-salt")
    monkeypatch.delenv("MLOPS_NB_TEST_LOG_SALT")
    with pytest.raises(ConfigError, match=r"serving.log_salt_env: .* hashed column\(s\) \['c1'\]"):
        monitor_batch(load_config(config), inference_log=tmp_path / "private", out=tmp_path, batch_id="no-salt")
