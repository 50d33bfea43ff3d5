"""The Spark engine (mlops_nb.spark, local[2]) against the pandas engine on the same rows: batch scoring (spark_udf) equals
scoring.score_file, partitioned output, and drift statistics that give monitoring's scores and decisions.
Skipped, saying why, when Java or pyspark is missing (`make install-spark` installs both)."""
import shutil, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

if shutil.which("java") is None: pytest.skip("the Spark engine needs Java (Debian: default-jre-headless; `make install-spark`)", allow_module_level=True)
pytest.importorskip("pyspark", reason="the Spark engine needs pyspark (`make install-spark`)")

from mlops_nb.models import build_pipeline, model_columns, target_vector
from mlops_nb.core import load_config, run_context
from mlops_nb.eda import load_data, load_splits, reference_statistics
from mlops_nb.evaluation import CHAMPION, decisions, log_model, positive_scores, register_version
from mlops_nb.monitoring import drift_report, monitor_batch
from mlops_nb import spark as S
from conftest import registered_project


@pytest.fixture(scope="module")
def spark():
    t0 = time.perf_counter()
    session = S.spark_session("local[2]")
    print(f"\nSpark session: {time.perf_counter() - t0:.1f} s")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory, spark):
    "A registered champion (logistic regression on 1,500 rows) in a SQLite store, and its test split."
    folder = tmp_path_factory.mktemp("spark")
    ctx = run_context(None, folder / "run", overrides=[f"tracking.uri=sqlite:///{folder / 'mlruns.db'}", "data.sample_rows=1500"])
    cfg = ctx.config
    data, schema = load_data(ctx)
    train, test = load_splits(ctx)
    columns = model_columns(schema)
    pipeline = build_pipeline(schema, "logistic_regression", cfg.split.seed).fit(train[columns], target_vector(train, cfg))
    reference = reference_statistics(train, schema, scores=positive_scores(pipeline, train[columns]))
    model = register_version(ctx, log_model(ctx, pipeline, train[columns], reference), gates=[])
    from mlops_nb.core import mlflow_client
    mlflow_client(ctx.tracking_uri).set_registered_model_alias(cfg.model_name, CHAMPION, model["version"])
    return {"cfg": cfg, "folder": folder, "test": test, "train": train, "columns": columns, "pipeline": pipeline,
            "reference": reference, "model": model}


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


def test_spark_scoring_equals_the_pandas_engine_and_keeps_the_partitions(project, tmp_path):
    from mlops_nb.scoring import score_file
    cfg, test = project["cfg"], project["test"]
    flat, partitioned = tmp_path / "batch.parquet", tmp_path / "batch-partitioned"
    test.to_parquet(flat, index=False)
    test.to_parquet(partitioned, partition_cols=["sex", "colour"], index=False)
    t0 = time.perf_counter()
    result = S.score_parquet_spark(cfg, partitioned, tmp_path / "spark-out")
    print(f"\nspark scoring of {len(test)} rows: {time.perf_counter() - t0:.1f} s")
    pandas_result = score_file(cfg, flat, tmp_path / "pandas-out.parquet", progress=False)
    assert result["rows"] == pandas_result["scored"] == len(test) and result["partition_by"] == ["sex", "colour"]
    assert result["model"]["version"] == pandas_result["model_version"] == project["model"]["version"]
    top = sorted(p.name for p in (tmp_path / "spark-out").iterdir() if p.is_dir())
    assert top == sorted(f"sex={v}" for v in test["sex"].unique())
    assert all(p.name.startswith("colour=") for p in (tmp_path / "spark-out" / top[0]).iterdir() if p.is_dir())
    spark_rows = pd.read_parquet(tmp_path / "spark-out")
    spark_rows = spark_rows.assign(sex=spark_rows["sex"].astype(str), colour=spark_rows["colour"].astype(str))
    pandas_rows = pd.read_parquet(tmp_path / "pandas-out.parquet")
    assert {"probability", "prediction", "model_version"} <= set(spark_rows.columns)  # partition columns come back last
    key = list(test.columns) + ["probability"]
    a, b = _sorted(spark_rows[pandas_rows.columns], key), _sorted(pandas_rows, key)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=False, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a["prediction"].to_numpy(), decisions(a["probability"]))


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_spark_scores_each_task_like_the_pandas_engine(spark, tmp_path, task):
    "Wine (three named classes) and diabetes (a quantity): the Spark engine writes the batch scorer's columns and values."
    from sklearn.datasets import load_diabetes, load_wine
    from mlops_nb.scoring import score_file
    loader, estimator = (load_wine, "logistic_regression") if task == "multiclass" else (load_diabetes, "ridge")
    frame = loader(as_frame=True).frame
    if task == "multiclass":
        frame["target"] = frame["target"].map({0: "class_0", 1: "class_1", 2: "class_2"})
    p = registered_project(tmp_path, frame, "target", estimator)
    model = f"{p.model['name']}/{p.model['version']}"
    batch = tmp_path / "batch.parquet"
    frame.drop(columns="target").to_parquet(batch, index=False)
    S.score_parquet_spark(p.cfg, batch, tmp_path / "spark-out", model=model)
    score_file(p.cfg, batch, tmp_path / "pandas-out.parquet", model=model, progress=False)
    spark_rows, pandas_rows = pd.read_parquet(tmp_path / "spark-out"), pd.read_parquet(tmp_path / "pandas-out.parquet")
    added = ["probability", "prediction"] if task == "multiclass" else ["prediction"]
    assert [c for c in spark_rows.columns if c not in frame.columns] == [*added, "model_version"]
    key = list(frame.columns.drop("target"))
    a, b = _sorted(spark_rows[pandas_rows.columns], key), _sorted(pandas_rows, key)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=False, rtol=0, atol=1e-9)
    if task == "multiclass":
        assert set(a["prediction"]) <= {"class_0", "class_1", "class_2"} and a["probability"].between(1 / 3, 1).all()


def test_scoring_refuses_what_it_cannot_score(project, tmp_path):
    from mlops_nb.core import ConfigError, DataValidationError, MlopsError
    cfg, test = project["cfg"], project["test"]
    test.drop(columns=["age"]).to_parquet(tmp_path / "no-age.parquet", index=False)
    with pytest.raises(DataValidationError, match="age: column is missing"): S.score_parquet_spark(cfg, tmp_path / "no-age.parquet", tmp_path / "o1")
    test.assign(probability=1.0).to_parquet(tmp_path / "clash.parquet", index=False)
    with pytest.raises(ConfigError, match="probability"): S.score_parquet_spark(cfg, tmp_path / "clash.parquet", tmp_path / "o2")
    test.to_csv(tmp_path / "batch.csv", index=False)
    with pytest.raises(ConfigError, match="reads Parquet"): S.score_parquet_spark(cfg, tmp_path / "batch.csv", tmp_path / "o3")
    with pytest.raises(MlopsError, match="nope"): S.score_parquet_spark(cfg, tmp_path / "clash.parquet", tmp_path / "o4", model="nope@champion")


def test_large_reference_drift_equals_the_pandas_engine(project, spark):
    """The reference has more than 1,000 rows: a batch of fewer than 1,000 values gets KS (on its collected values) and
    chi-square, a larger one Wasserstein / Jensen-Shannon; same tests, same decisions, scores within 0.003 of pandas'.
    KS requested on more than 10,000 values: from counts at the reference's quantiles, p-values within 0.01."""
    test, reference, cfg = project["test"], project["reference"], project["cfg"]
    assert len(test) < 1000 < reference["rows"]
    shift = lambda b: b.assign(age=b["age"] + 8, checks=b["checks"] * 2)
    big = pd.concat([test] * (1000 // len(test) + 1), ignore_index=True)
    for name, batch in {"same": test, "shifted": shift(test), "large": big, "large shifted": shift(big)}.items():
        s = S.reference_drift_spark(cfg, spark.createDataFrame(batch), reference)
        p = drift_report(batch, reference, exclude=[cfg.data.time_column])
        assert list(s.index) == list(p.index) and list(s.test) == list(p.test), name
        assert list(s.drifted) == list(p.drifted), (name, s, p)
        np.testing.assert_allclose(s.score.to_numpy(float), p.score.to_numpy(float), atol=0.003, rtol=0)
        assert s.loc["age", "drifted"] == name.endswith("shifted")
        assert s.loc["age", "test"] == ("wasserstein" if name.startswith("large") else "ks"), name
    huge = pd.concat([test] * (10_000 // len(test) + 1), ignore_index=True)
    huge = huge.assign(age=huge["age"] + np.random.default_rng(0).normal(0, 3, len(huge)))
    s = S.reference_drift_spark(cfg, spark.createDataFrame(huge), reference, methods={"age": "ks"})
    p = drift_report(huge, reference, methods={"age": "ks"}, exclude=[cfg.data.time_column])
    assert s.loc["age", "score"] == pytest.approx(p.loc["age", "score"], abs=0.01)
    assert s.loc["age", "drifted"] == p.loc["age", "drifted"]


@pytest.mark.parametrize("rows", [300, 12_000], ids=["exact-ks", "asymptotic-ks"])
def test_small_reference_ks_and_chisquare_from_counts(spark, rows):
    "KS and chi-square (reference of at most 1,000 rows) from Spark counts: scipy's p-values on the raw rows, to 1e-12."
    rng = np.random.default_rng(rows)
    small = pd.DataFrame({"x": rng.normal(0, 1, 400).round(1), "c": rng.choice(list("abc"), 400), "y": 1})
    ref = reference_statistics(small, {"features": ["x", "c"], "target": "y", "columns": {"x": {"kind": "numeric"}, "c": {"kind": "categorical"}}})
    batch = pd.DataFrame({"x": rng.normal(0.1, 1, rows).round(1), "c": rng.choice(list("abcd"), rows, p=[0.4, 0.3, 0.2, 0.1])})
    cfg = load_config(overrides=["data.time_column=null"])
    s = S.reference_drift_spark(cfg, spark.createDataFrame(batch), ref)
    assert list(s.test) == ["ks", "chisquare"]
    assert s.loc["x", "score"] == pytest.approx(scipy.stats.ks_2samp(ref["columns"]["x"]["sample"], batch.x).pvalue, abs=1e-12)
    p = drift_report(batch, ref)
    np.testing.assert_allclose(s.score.to_numpy(float), p.score.to_numpy(float), atol=1e-12, rtol=0)
    assert list(s.drifted) == list(p.drifted)
    methods = {"x": "jensenshannon", "c": "psi"}  # on request: the same 10 bins, the same proportions
    np.testing.assert_allclose(S.reference_drift_spark(cfg, spark.createDataFrame(batch), ref, methods).score.to_numpy(float),
                               drift_report(batch, ref, methods).score.to_numpy(float), atol=1e-12, rtol=0)


def test_drift_edge_cases(spark):
    from mlops_nb.core import DataValidationError
    rng = np.random.default_rng(5)
    small = pd.DataFrame({"x": rng.normal(0, 1, 300), "c": rng.choice(list("ab"), 300), "y": 1})
    ref = reference_statistics(small, {"features": ["x", "c"], "target": "y", "columns": {"x": {"kind": "numeric"}, "c": {"kind": "categorical"}}})
    cfg = load_config(overrides=["data.time_column=null"])
    batch = pd.DataFrame({"x": rng.normal(0, 1, 100), "c": rng.choice(list("ab"), 100)})
    emptied = S.reference_drift_spark(cfg, spark.createDataFrame(batch.assign(x=np.nan)), ref)
    assert emptied.loc["x", "drifted"] and pd.isna(emptied.loc["x", "score"])  # a column that went empty (NaN read as missing)
    marked = S.reference_drift_spark(cfg, spark.createDataFrame(batch.assign(c="?")), ref)  # the config's missing-value marker
    assert marked.loc["c", "drifted"] and marked.attrs["statistics"]["c"]["present"] == 0
    with pytest.raises(DataValidationError, match="c: column is missing"): S.reference_drift_spark(cfg, spark.createDataFrame(batch.drop(columns="c")), ref)
    with pytest.raises(DataValidationError, match="x: expected numbers, found Spark type string"):
        S.reference_drift_spark(cfg, spark.createDataFrame(batch.assign(x="a")), ref)


def test_monitor_batch_spark_decides_as_the_pandas_engine(project, tmp_path):
    cfg, test = project["cfg"], project["test"]
    shifted = test.assign(age=test["age"] + 8)
    shifted.to_parquet(tmp_path / "shifted.parquet", index=False)
    s = S.monitor_batch_spark(cfg, tmp_path / "shifted.parquet", out=tmp_path / "spark", batch_id="b1")
    p = monitor_batch(cfg, shifted, out=tmp_path / "pandas", batch_id="b1")
    assert s["model"]["version"] == p["model"]["version"] and s["rows"] == p["rows"]
    assert s["dataset_drift"] == p["dataset_drift"] and s["drift_share"] == p["drift_share"]
    assert {c: d["drifted"] for c, d in s["columns"].items()} == {c: d["drifted"] for c, d in p["columns"].items()}
    assert s["prediction_drift"]["drifted"] == p["prediction_drift"]["drifted"]
    assert s["prediction_drift"]["score"] == pytest.approx(p["prediction_drift"]["score"], abs=0.003)
    rows = lambda anomalies: {c: {k: f["rows"] for k, f in found.items()} for c, found in anomalies.items()}
    assert rows(s["anomalies"]) == rows(p["anomalies"])  # out-of-range ages, counted the same
    assert s["source"]["engine"] == "spark" and s["performance"] == {}
    assert [p.name for p in (tmp_path / "spark" / "monitoring" / "b1").iterdir()] == ["decision.json"]  # no report


def test_monitor_engine_spark_reports_with_the_monitoring_notebook(project, tmp_path):
    "`mlops-nb monitor --engine spark`: the monitoring notebook run with ENGINE=spark; its HTML is the batch's report."
    import json
    from conftest import run_cli
    test = project["test"]
    test.assign(age=test["age"] + 8).to_parquet(tmp_path / "shifted.parquet", index=False)
    store = f"tracking.uri=sqlite:///{project['folder'] / 'mlruns.db'}"
    proc = run_cli("monitor", tmp_path / "shifted.parquet", "--engine", "spark", "--set", store,
                   "--set", "data.sample_rows=1500", "--batch-id", "big", "--out", tmp_path / "reports", cwd=tmp_path)
    assert proc.returncode in (0, 5, 6), proc.stderr
    folder = tmp_path / "reports" / "monitoring" / "big"
    d = json.loads((folder / "decision.json").read_text())
    assert d["source"]["engine"] == "spark" and d["engine"] == "spark" and d["columns"]["age"]["drifted"]
    html = (folder / "monitoring.html").read_text()
    assert "Batch <strong>big</strong>" in html and 'src="data:image/png;base64,' in html
    assert "Spark engine measures no" in html
    assert f"report: {folder / 'monitoring.html'}" in proc.stdout
    injected = [c for c in json.loads((folder / "monitoring.ipynb").read_text())["cells"]
                if "injected-parameters" in c["metadata"].get("tags", [])][0]
    assert 'ENGINE = "spark"' in "".join(injected["source"])
    assert 'href="monitoring/big/monitoring.html"' in (tmp_path / "reports" / "index.html").read_text()
