"""Hostile and odd data (issue 10): every case gets a correct run or a clear error naming the column, never a traceback
and never a silently wrong report.

`mlops-nb validate` takes every case (in this process, through the command's own Typer app: a subprocess per case
would spend its time starting Python; tests/test_data_errors.py and the preflight cases below run the installed
console script); `mlops-nb run` takes the cases whose handling only shows downstream: the kitchen-sink data through eda, rai, baseline and evaluation (then
`mlops-nb monitor`), odd Parquet types through eda and baseline; with `make test-slow`, a thousand columns through eda and
a million rows through validate and eda (a thousand columns through validate is in the default suite).
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ARRESTS_ROLES, read_json, run_cli, write_config
from hostile import PATH_LIKE, TARGET, XSS, XSS_VALUES, kitchen_sink_run, signal_frame, slow

NO_FAIRNESS = {"sensitive_features": [], "time_column": None}
NO_FAIRNESS_GATES = {"max_demographic_parity_difference": None, "max_equalized_odds_difference": None}


def _csv(df: pd.DataFrame):
    return lambda path: df.to_csv(path, index=False)


def _text(text: str):
    return lambda path: path.write_text(text, encoding="utf-8")


def _parquet(table):
    return lambda path: pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False), path)


def _with_nested(df: pd.DataFrame) -> pa.Table:
    t = pa.Table.from_pandas(df, preserve_index=False)
    return t.append_column("tags", pa.array([[1, 2]] * len(df))).append_column("info", pa.array([{"k": "v"}] * len(df)))


def _mixed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.astype({"age": object})
    out.loc[[3, 7], "age"] = "abc"
    return out


B = signal_frame(200)
HEADER = ",".join(B.columns)
# name -> (file suffix, writer, config data/gates overrides, expected exit code, texts the output must hold)
CASES = {
    "empty file": (".csv", _text(""), {}, 4, ["the file is empty"]),
    "header only": (".csv", _text(HEADER + "\n"), {}, 4, ["*: the data has no rows"]),
    "one row": (".csv", _csv(B.head(1)), {}, 4, ["released: the target has a single class"]),
    "one class": (".csv", _csv(B.assign(released="Yes")), {}, 4, ["released: the target has a single class ('Yes'): there is nothing to learn"]),
    "target with three values": (".csv", _csv(B.assign(released=["Yes", "No", "Maybe", "Yes"] * 50)), {}, 4,
                                 ["released: data.task is binary but the target has 3 classes"]),
    "missing target values": (".csv", _csv(B.assign(released=B.released.where(B.index != 9))), {}, 0,
                              ["warning: released: no target value in 1 row (rows 9)"]),
    "all-missing column": (".csv", _csv(B.assign(empty=np.nan)), {}, 0, ["warning: empty: every value is missing"]),
    "constant column": (".csv", _csv(B.assign(constant=7)), {}, 0, ["warning: constant: constant column (one value)"]),
    "script as a column name": (".csv", _csv(B.assign(**{XSS: np.resize(XSS_VALUES, len(B))})), {}, 0, ["passes every check"]),
    "unicode and spaces": (".csv", _csv(B.rename(columns={"age": "âge (années)", "checks": " spaced  name "})
                                        .assign(colour=B.colour.map({"White": "Blanc ☃", "Black": "Noir 日本"}))), {}, 0, ["passes every check"]),
    "duplicate column names (csv)": (".csv", _text(HEADER + ",age\n" + "\n".join(f"{r.released},{r.colour},{r.sex},{r.age},{r.year},{r.checks},{r.age}"
                                                                                for r in B.itertuples())), {}, 4, ["duplicate column names: ['age']"]),
    "duplicate column names (parquet)": (".parquet", _parquet(pa.Table.from_arrays([pa.array(B.released), pa.array(B.age), pa.array(B.checks)],
                                                                                   names=["released", "age", "age"])), {}, 4, ["duplicate column names: ['age']"]),
    "empty column name": (".csv", _text(HEADER.replace("year", "") + "\n" + "\n".join(",".join(map(str, r)) for r in B.itertuples(index=False))),
                          {}, 4, ["column(s) [5] (counting from 1) have no name"]),
    "mixed types in one column": (".csv", _csv(_mixed(B)), {}, 4,
                                  ["age: mixed types: 198 numbers but 2 text value(s) ('abc') in 2 rows (rows 3, 7); list missing-value markers"]),
    "mixed words and numbers": (".csv", _csv(B.assign(grade=["A", "B", "1", "2"] * 50)), {}, 0,
                                ["warning: grade: mixed types: 100 numbers and 100 words (treated as categories)"]),
    "numbers as strings (quoted csv)": (".csv", lambda p: B.to_csv(p, index=False, quoting=1), {}, 0, ["passes every check"]),
    "numbers as strings (parquet)": (".parquet", _parquet(B.astype({"age": str})), {}, 0, ["warning: age: numbers stored as text"]),
    "infinity": (".csv", _csv(B.assign(age=B.age.astype(float).where(B.index != 5, np.inf))), {}, 0,
                 ["warning: age: infinite values in 1 row (rows 5)"]),
    "minus infinity (parquet)": (".parquet", _parquet(B.assign(checks=B.checks.astype(float).where(B.index != 8, -np.inf))), {}, 0,
                                 ["warning: checks: infinite values in 1 row (rows 8)"]),
    "NaN in a feature": (".csv", _csv(B.assign(age=B.age.astype(float).where(B.index % 7 != 0))), {}, 0, ["passes every check"]),
    "dates (csv text)": (".csv", _csv(B.assign(when=pd.date_range("2020-01-01", periods=len(B)).strftime("%Y-%m-%d"))), {}, 0, ["passes every check"]),
    "an invalid date": (".csv", _csv(B.assign(when=["2020-02-28", "2020-02-30"] * 100)), {}, 4,
                        ["when: not a valid date or time in 100 rows (rows 1, 3, 5, 7, 9, ...): '2020-02-30'"]),
    "dates (parquet)": (".parquet", _parquet(B.assign(when=pd.date_range("2020-01-01", periods=len(B)))), {}, 0, ["passes every check"]),
    "booleans with missing values": (".csv", _csv(B.assign(flag=pd.Series([True, False, None, True] * 50, dtype=object))), {}, 0, ["passes every check"]),
    "boolean target": (".parquet", _parquet(B.assign(released=B.released == "Yes")), {"data": {"positive_label": True}}, 0, ["passes every check"]),
    "sensitive feature with one group": (".csv", _csv(B.assign(sex="Male")), {}, 4,
                                         ["sex: sensitive feature 'sex' has a single group ('Male'): fairness between groups cannot be measured"]),
    "nested types (parquet)": (".parquet", _parquet(_with_nested(B)), {}, 4,
                               ["tags: nested values (lists, maps or structs) cannot be model inputs", "info: nested values"]),
    "nested types, dropped": (".parquet", _parquet(_with_nested(B)), {"data": {"drop_columns": ["tags", "info"]}}, 0, ["passes every check"]),
    "only the target column": (".csv", _csv(B[["released"]]), {"data": NO_FAIRNESS, "gates": NO_FAIRNESS_GATES}, 4,
                               ["released: the data holds only the target column"]),
    "not text at all": (".csv", lambda p: p.write_bytes(bytes(range(256)) * 20), {}, 4, ["cannot be read"]),
    "corrupt parquet": (".parquet", lambda p: p.write_bytes(b"PAR1" + b"\0" * 100), {}, 4, ["cannot be read", "Parquet magic bytes"]),
    "1,000 columns": (".csv", _csv(pd.concat([B, pd.DataFrame(np.random.default_rng(0).normal(size=(len(B), 1000)).round(3),
                                                              columns=[f"f{i:04d}" for i in range(1000)])], axis=1)), {}, 0, ["passes every check"]),
}


def _write_case(folder: Path, name: str) -> tuple[Path, Path]:
    "Write a case's data file and config into `folder`."
    suffix, writer, overrides, _, _ = CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"data{suffix}"
    writer(data)
    return data, write_config(folder, **overrides)


@pytest.mark.parametrize("name", list(CASES))
def test_validate(tmp_path, name):
    from typer.testing import CliRunner
    from mlops_nb.cli import app
    data, config = _write_case(tmp_path, name)
    result, (_, _, _, code, texts) = CliRunner().invoke(app, ["validate", str(data), "--config", str(config)]), CASES[name]
    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    assert result.exit_code == code, output
    for text in texts: assert text in output, output
    if code:  # one line naming every problem (the column, or the file)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines


@pytest.mark.parametrize("name", ["nested types (parquet)"])
def test_run_refuses_before_any_notebook(tmp_path, name):
    "The pipeline's preflight validates the data: exit 4, one line, no stage ran, the run is recorded as failed."
    data, _ = _write_case(tmp_path, name)
    config = write_config(tmp_path, data={"source": str(data), **ARRESTS_ROLES, **CASES[name][2].get("data", {})})
    proc = run_cli("run", "--config", config, "--stages", "eda", cwd=tmp_path, timeout=180)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and CASES[name][4][0] in errors[0], proc.stderr
    run_dir, = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "failed" and CASES[name][4][0] in s["stages"]["_pipeline"]["error"]
    assert not list(run_dir.glob("*.ipynb"))


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    return kitchen_sink_run(tmp_path_factory)


def test_kitchen_sink_runs_every_stage_correctly(kitchen):
    "Hostile and unicode names and values, NaN, a constant, booleans with gaps, dates as text, words mixed with numbers."
    proc, s, run_dir = kitchen["proc"], kitchen["summary"], kitchen["run_dir"]
    assert proc.returncode in (0, 3) and "Traceback" not in proc.stderr, proc.stderr  # 3: a gate failed, reported as such
    assert [(k, v["status"]) for k, v in s["stages"].items()] == [(k, "succeeded") for k in ("eda", "rai", "baseline", "evaluation", "monitoring", "deploy")]
    eda = read_json(run_dir / "eda.json")
    cols = eda["schema"]["columns"]
    assert eda["metrics"]["rows"] == 400 and eda["metrics"]["columns"] == 14
    assert cols["when"]["kind"] == "datetime" and cols["flag"] == {**cols["flag"], "kind": "categorical", "categories": ["False", "True"]}
    assert cols["âge (années)"]["kind"] == "numeric" and 0.05 < cols["âge (années)"]["missing_share"] < 0.15
    assert cols[" spaced  name "]["kind"] == "numeric" and cols["grade"]["kind"] == "categorical"
    assert sorted(cols[XSS]["categories"]) == sorted(XSS_VALUES)
    warned = {(c["column"], c["message"].split(":")[0]) for c in eda["checks"]}
    assert ("constant", "constant column (one value)") in warned and ("grade", "mixed types") in warned
    assert eda["schema"]["excluded_features"]["constant"].startswith("constant column")  # left out of the inputs, with the reason
    baseline = read_json(run_dir / "baseline.json")
    inputs = [c for group in ("numeric", "categorical", "boolean") for c in baseline["features"][group]]
    assert "when" in baseline["features"]["excluded"] and XSS in inputs and "客户 类型" in inputs and PATH_LIKE in inputs
    assert TARGET not in inputs and "constant" in baseline["features"]["excluded"]
    assert not {"released", "colour", "sex", "year", "age"} & set(eda["schema"]["columns"])  # no built-in name anywhere
    rai = read_json(run_dir / "rai.json")
    assert {g["group"] for g in rai["groups"] if g["feature"] == XSS} == set(XSS_VALUES)
    assert set(s["fairness"]) == {XSS, "genre"} and all(v is not None for f in s["fairness"].values() for v in f.values())
    gates = {g["name"]: g for g in s["gates"]}
    assert f"max_demographic_parity_difference[{XSS}]" in gates and gates["min_primary_metric"]["value"] > 0.6
    assert proc.returncode == (3 if not all(g["passed"] for g in s["gates"]) else 0)
    assert s["model"]["version"] == 1 and s["metrics"]["test_roc_auc"] == pytest.approx(gates["min_primary_metric"]["value"])


def test_kitchen_sink_monitoring(kitchen):
    "`mlops-nb monitor` on a new batch of the same odd data: drift for every model input, hostile names kept as data."
    proc = kitchen["monitor"]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    decision = read_json(kitchen["reports"] / "monitoring" / "hostile-batch" / "decision.json")
    assert {XSS, "âge (années)", PATH_LIKE} <= set(decision["columns"]) and "when" not in decision["columns"]
    assert not decision["dataset_drift"] and not any("unseen categories" in r for r in decision["reasons"]), decision["reasons"]


def test_a_batch_like_the_training_data_is_ok(kitchen):
    decision = read_json(kitchen["reports"] / "monitoring" / "hostile-batch" / "decision.json")
    assert decision["decision"] == "ok", decision["reasons"]


ODD_PARQUET = pd.DataFrame({  # no numeric feature at all: a boolean target, a datetime time column, numbers as text, a boolean
    "released": np.resize([True, True, False, True, False], 300), "when": pd.date_range("2021-01-01", periods=300, freq="D"),
    "sex": np.resize(["Male", "Female", "Female"], 300), "zip": np.resize(["02134", "10001", "94105", "60601"], 300),
    "employed": np.resize([True, False, False, True, True, True, False], 300)})


def test_odd_parquet_types_through_eda_and_baseline(tmp_path):
    data = tmp_path / "odd.parquet"
    t = _with_nested(ODD_PARQUET)
    pq.write_table(t, data)
    config = write_config(tmp_path, data={"source": str(data), "target": "released", "positive_label": True, "sensitive_features": ["sex"],
                                          "time_column": "when", "drop_columns": ["tags", "info"]},
                          gates={"max_equalized_odds_difference": None}, model={"cv_folds": 3})
    proc = run_cli("run", "--config", config, "--stages", "eda,baseline", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    run_dir, = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    cols = read_json(run_dir / "eda.json")["schema"]["columns"]
    assert {c: v["kind"] for c, v in cols.items()} == {"released": "boolean", "when": "datetime", "sex": "categorical",
                                                       "zip": "categorical", "employed": "boolean"}
    assert cols["zip"]["categories"] == ["02134", "10001", "60601", "94105"]  # leading zeros kept: text, not numbers
    assert read_json(run_dir / "eda.json")["metrics"]["positive_rate"] == pytest.approx(0.6)
    baseline = read_json(run_dir / "baseline.json")
    assert baseline["features"] == {"numeric": [], "categorical": ["sex", "zip"], "boolean": ["employed"], "excluded": ["when"]}
    assert baseline["baseline"]["models"]["dummy"]["roc_auc"] == 0.5


@slow
def test_a_thousand_columns_through_eda(tmp_path):
    "Wide data: eda profiles the first 30 features and says how many it left out; the schema has every column."
    data, _ = _write_case(tmp_path, "1,000 columns")
    config = write_config(tmp_path, data={"source": str(data), **ARRESTS_ROLES})
    proc = run_cli("run", "--config", config, "--stages", "eda", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    run_dir, = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    eda = read_json(run_dir / "eda.json")
    assert eda["metrics"]["columns"] == 1006 and len(eda["schema"]["features"]) == 1005
    html = (run_dir / "eda.html").read_text(encoding="utf-8")
    assert "975 of 1,005 features are not profiled" in html


def test_metric_names_from_path_like_column_names(tmp_path):
    "Monitoring logs one drift metric per column: columns named like a URL or a path must not break it."
    from mlops_nb.core import log_batch, run_context
    from mlflow.tracking import MlflowClient
    names = ["http://example.org/x", "a/../b", "ends with /", "a//b", "./here"]
    ctx = run_context(write_config(tmp_path), tmp_path / "run")
    for name in names: log_batch(ctx, ctx.parent_run_id, metrics={"drift": {name: 0.25}})
    metrics = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(ctx.parent_run_id).data.metrics
    assert len(metrics) == len(names) and set(metrics.values()) == {0.25}


@slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_million_rows(tmp_path, fmt):
    "Long data: validate, then the eda stage (profile, associations, split, reference statistics) in bounded time."
    n, rng = 1_000_000, np.random.default_rng(0)
    df = pd.concat([signal_frame(n // 1000, seed=i) for i in range(1000)], ignore_index=True).assign(income=rng.normal(50, 10, n).round(2))
    data = tmp_path / f"long.{fmt}"
    df.to_csv(data, index=False) if fmt == "csv" else df.to_parquet(data, index=False)
    proc = run_cli("validate", data, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "passes every check" in proc.stdout, proc.stderr
    config = write_config(tmp_path, data={"source": str(data), **ARRESTS_ROLES}, pipeline={"stage_timeout": 600})
    proc = run_cli("run", "--config", config, "--stages", "eda", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    run_dir, = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    eda = read_json(run_dir / "eda.json")
    assert eda["metrics"]["rows"] == n and eda["metrics"]["train_rows"] == 800_000
    assert eda["schema"]["columns"]["income"]["kind"] == "numeric"
