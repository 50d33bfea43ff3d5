"""Responsible-AI stage: fairness metrics and SHAP explanations against hand-computed answers,
sensitive-group edge cases, and the 02_rai notebook run through papermill with an injected config."""
import numpy as np
import pandas as pd
import papermill as pm
import pytest
import nbformat
from mlflow.tracking import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from conftest import NBS, read_json, write_config
from mlops_nb.core import DataValidationError, apply_task, load_config
from mlops_nb.eda import infer_schema
from mlops_nb.models import estimator_pipeline
from mlops_nb.rai import (MISSING_GROUP, correlation_ratio, explain_model, fairness_frame, group_metrics, group_summary, model_inputs,
                          plot_beeswarm, plot_group_metrics, plot_importance, plot_local, proxy_table,
                          small_groups, source_columns)

# ---------------------------------------------------------------- fairness: known answers
# group a: y 1 1 1 0 0, pred 1 1 0 1 0 -> selection 3/5, TPR 2/3, FPR 1/2, precision 2/3, accuracy 3/5
# group b: y 1 0 0 0,   pred 0 0 0 1   -> selection 1/4, TPR 0/1, FPR 1/3, precision 0/1, accuracy 2/4
Y_TRUE = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0])
Y_PRED = np.array([1, 1, 0, 1, 0, 0, 0, 0, 1])
GROUPS = pd.Series(list("aaaaabbbb"), name="g")


def test_group_metrics_known_answers():
    gm = group_metrics(Y_TRUE, Y_PRED, GROUPS)
    assert list(gm.columns) == ["count", "selection_rate", "tpr", "fpr", "precision", "accuracy"]
    assert gm.index.name == "g" and list(gm.index) == ["a", "b"]
    np.testing.assert_allclose(gm.loc["a"].to_numpy(dtype=float), [5, 3 / 5, 2 / 3, 1 / 2, 2 / 3, 3 / 5])
    np.testing.assert_allclose(gm.loc["b"].to_numpy(dtype=float), [4, 1 / 4, 0, 1 / 3, 0, 2 / 4])


def test_fairness_frame_known_answers():
    ff = fairness_frame(Y_TRUE, Y_PRED, GROUPS.to_frame(), n_bootstrap=100, seed=1)
    names = ["demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference"]
    assert list(ff.columns) == [f"{n}{s}" for n in names for s in ("", "_low", "_high")]
    assert list(ff.index) == ["g"]
    assert ff.loc["g", "demographic_parity_difference"] == pytest.approx(3 / 5 - 1 / 4)
    assert ff.loc["g", "demographic_parity_ratio"] == pytest.approx((1 / 4) / (3 / 5))
    assert ff.loc["g", "equalized_odds_difference"] == pytest.approx(max(2 / 3 - 0, 1 / 2 - 1 / 3))
    for n in names: assert ff.loc["g", f"{n}_low"] <= ff.loc["g", f"{n}_high"]


def test_fairness_bootstrap_is_seeded_and_its_interval_narrows_with_data():
    rng = np.random.default_rng(7)
    s = pd.DataFrame({"g": rng.choice(["a", "b"], 4000), "h": rng.choice(["x", "y", "z"], 4000)})
    y = rng.integers(0, 2, 4000)
    pred = (rng.random(4000) < np.where(s.g == "a", 0.6, 0.4)).astype(int)  # a selected more often by construction
    ff = fairness_frame(y, pred, s, n_bootstrap=200, seed=3)
    pd.testing.assert_frame_equal(ff, fairness_frame(y, pred, s, n_bootstrap=200, seed=3))
    assert not ff.equals(fairness_frame(y, pred, s, n_bootstrap=200, seed=4))
    lo, point, hi = ff.loc["g", ["demographic_parity_difference_low", "demographic_parity_difference", "demographic_parity_difference_high"]]
    assert lo < point < hi and 0.15 < point < 0.25 and hi - lo < 0.1
    for name in ("demographic_parity_ratio", "equalized_odds_difference"):  # the bootstrap recomputes the same metric
        assert ff.loc["g", f"{name}_low"] < ff.loc["g", name] < ff.loc["g", f"{name}_high"], name
    small = fairness_frame(y[:200], pred[:200], s.iloc[:200], n_bootstrap=200, seed=3)
    width = lambda f: f.loc["g", "demographic_parity_difference_high"] - f.loc["g", "demographic_parity_difference_low"]
    assert width(small) > 2 * width(ff)
    narrow = fairness_frame(y, pred, s, n_bootstrap=200, seed=3, ci=0.5)
    assert width(narrow) < width(ff)


def test_multinomial_bootstrap_gives_the_intervals_of_resampling_rows():
    # the counts are drawn directly (multinomial); resampling the rows themselves is the definition
    rng = np.random.default_rng(11)
    n, draws = 3000, 4000
    g = rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1])
    y = rng.integers(0, 2, n)
    pred = (rng.random(n) < np.where(g == "a", 0.5, 0.3)).astype(int)
    ff = fairness_frame(y, pred, pd.DataFrame({"g": g}), n_bootstrap=draws, seed=0)
    codes = pd.factorize(g, sort=True)[0]
    rows = rng.integers(0, n, size=(draws, n))
    offset = np.arange(draws)[:, None] * 3
    chosen = np.bincount((offset + codes[rows]).ravel(), weights=pred[rows].ravel(), minlength=3 * draws).reshape(draws, 3)
    size = np.bincount((offset + codes[rows]).ravel(), minlength=3 * draws).reshape(draws, 3)
    rate = chosen / size
    dpd = rate.max(1) - rate.min(1)
    low, high = np.percentile(dpd, [2.5, 97.5])
    assert abs(ff.loc["g", "demographic_parity_difference_low"] - low) < 0.01
    assert abs(ff.loc["g", "demographic_parity_difference_high"] - high) < 0.01
    assert high - low > 0.08  # the interval is wide enough for the tolerance to mean something


def test_bootstrap_intervals_collapse_when_every_resample_has_the_same_answer():
    "Group a always selected, group b never: every resample has DP difference 1, ratio 0, EO difference 1."
    rng = np.random.default_rng(0)
    g = pd.DataFrame({"g": ["a"] * 50 + ["b"] * 50})
    y, pred = rng.integers(0, 2, 100), np.r_[np.ones(50, int), np.zeros(50, int)]
    ff = fairness_frame(y, pred, g, n_bootstrap=100, seed=0)
    for name, value in [("demographic_parity_difference", 1.0), ("demographic_parity_ratio", 0.0), ("equalized_odds_difference", 1.0)]:
        assert ff.loc["g", [name, f"{name}_low", f"{name}_high"]].tolist() == pytest.approx([value] * 3), name
    # group a predicted perfectly (TPR 1, FPR 0), group b never selected (TPR 0, FPR 0): EO difference 1 throughout
    pred = np.r_[y[:50], np.zeros(50, int)]
    ff = fairness_frame(y, pred, g, n_bootstrap=100, seed=0)
    assert ff.loc["g", ["equalized_odds_difference", "equalized_odds_difference_low", "equalized_odds_difference_high"]].tolist() == pytest.approx([1.0] * 3)
    # group a always selected (TPR 1, FPR 1), group b predicted perfectly (TPR 1, FPR 0): EO difference 1 throughout
    pred = np.r_[np.ones(50, int), y[50:]]
    ff = fairness_frame(y, pred, g, n_bootstrap=100, seed=0)
    assert ff.loc["g", ["equalized_odds_difference", "equalized_odds_difference_low", "equalized_odds_difference_high"]].tolist() == pytest.approx([1.0] * 3)


def test_missing_sensitive_values_are_their_own_named_group():
    g = pd.Series(["a", None, "a", "b", np.nan, "b", "a", "b", "a"], name="g")
    gm = group_metrics(Y_TRUE, Y_PRED, g)
    assert MISSING_GROUP == "(missing)" and gm.loc["(missing)", "count"] == 2
    ff = fairness_frame(Y_TRUE, Y_PRED, g.to_frame(), n_bootstrap=20)
    assert np.isfinite(ff.loc["g", "demographic_parity_difference"])
    fig = plot_group_metrics(Y_TRUE, Y_PRED, g.to_frame(), n_bootstrap=20)
    assert "(missing)" in [t.get_text() for t in fig.axes[0].get_xticklabels()]


def test_labels_must_be_binary():
    with pytest.raises(ValueError, match="y_pred"):
        group_metrics(Y_TRUE, Y_PRED * 2, GROUPS)


# ---------------------------------------------------------------- sensitive groups and proxies
def _frame():
    return pd.DataFrame({"released": ["Yes", "No"] * 40, "colour": ["a"] * 70 + ["b"] * 8 + [None] * 2,
                         "sex": ["m", "f"] * 40, "age": np.arange(80) % 37, "zip": ["z1"] * 70 + ["z2"] * 10})


def test_small_groups_are_named_not_merged():
    cfg = load_config(overrides=["rai.min_group_size=10"])
    groups = group_summary(_frame(), cfg)
    colour = groups[groups.feature == "colour"].set_index("group")
    assert list(colour.index) == ["(missing)", "a", "b"]  # the 2 missing values are a group of their own
    assert colour.loc["b", "rows"] == 8 and colour.loc["b", "small"] and not colour.loc["a", "small"]
    names = small_groups(groups)
    assert "colour = b (8 rows)" in names and "colour = (missing) (2 rows)" in names
    inter = groups[groups.feature == "colour × sex"].set_index("group")
    assert inter.loc["(missing) × f", "rows"] == 1 and inter.loc["a × m", "positive_rate"] == 1.0
    assert groups.groupby("feature").rows.sum().eq(80).all()


def test_absent_sensitive_feature_is_a_clear_error():
    cfg = load_config(overrides=["data.sensitive_features=[colour, ethnicity]"])
    for fn in (group_summary, proxy_table):
        with pytest.raises(DataValidationError, match="ethnicity"):
            fn(_frame(), cfg)


def test_correlation_ratio_known_answer():
    # group means 2 and 5, overall 3.5: between = 6 * 1.5**2 = 13.5, total = 17.5
    assert correlation_ratio(pd.Series([1.0, 2, 3, 4, 5, 6]), pd.Series(list("aaabbb"))) == pytest.approx(np.sqrt(13.5 / 17.5))
    assert correlation_ratio(pd.Series([1.0, 2, 1, 2]), pd.Series(list("abba"))) == 0.0


def test_proxy_table_flags_a_column_that_encodes_the_sensitive_feature():
    cfg = load_config(overrides=["data.sensitive_features=[colour]"])
    df = _frame().assign(income=lambda d: np.where(d.colour == "a", 10.0, 50.0) + np.arange(80) % 3)
    p = proxy_table(df, cfg).set_index("feature")
    assert p.loc["zip", "strong"] and p.loc["zip", "measure"] == "Cramér's V"
    assert p.loc["income", "strong"] and p.loc["income", "measure"] == "correlation ratio" and p.loc["income", "strength"] > 0.95
    assert not p.loc["sex", "strong"] and p.loc["age", "measure"] == "correlation ratio" and p.loc["age", "strength"] < 0.3


# ---------------------------------------------------------------- explanations
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame({"age": rng.normal(40, 10, n), "colour": rng.choice(["Black", "White", "Other"], n),
                       "employed": rng.choice(["Yes", "No"], n), "checks": rng.integers(0, 6, n)})
    df.loc[::19, "age"] = np.nan
    logit = 0.05 * (df.age.fillna(40) - 40) + (df.colour == "White") - 0.4 * df.checks + (df.employed == "Yes")
    df["released"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    cfg = apply_task(load_config(overrides=["data.time_column=null"]), "binary", "Yes")
    schema = infer_schema(df, cfg)
    X, y = model_inputs(df, schema, cfg)
    return schema, X, y


def test_linear_shap_sums_to_the_log_odds_and_groups_one_hot_columns(data):
    schema, X, y = data
    pipe = estimator_pipeline(schema, LogisticRegression(max_iter=1000)).fit(X, y)
    e = explain_model(pipe, X, n_samples=60, seed=1)
    assert (e.kind, e.output, len(e.values)) == ("linear", "log-odds", 60)
    assert list(e.values.columns) == ["age", "colour", "employed", "checks"] and e.data.index.equals(e.values.index)
    np.testing.assert_allclose(e.base_value + e.values.sum(axis=1), pipe.decision_function(e.data), atol=1e-8)
    # by hand: phi_j = coef_j * (x_j - mean of the background), background = up to 200 seeded rows of X
    pre, coef = pipe.named_steps["preprocess"], pipe.named_steps["model"].coef_[0]
    background = pre.transform(X.sample(n=200, random_state=1))
    phi = coef * (pre.transform(e.data) - background.mean(axis=0))
    colour = [i for i, name in enumerate(pre.get_feature_names_out()) if name.startswith("categorical__colour_")]
    assert len(colour) == 3
    np.testing.assert_allclose(e.values["colour"], phi[:, colour].sum(axis=1), atol=1e-10)
    np.testing.assert_allclose(e.base_value, pipe.named_steps["model"].intercept_[0] + coef @ background.mean(axis=0), atol=1e-10)


def test_tree_shap_sums_to_the_raw_margin_or_probability(data):
    schema, X, y = data
    hgb = estimator_pipeline(schema, HistGradientBoostingClassifier(max_iter=40, random_state=0)).fit(X, y)
    e = explain_model(hgb, X, n_samples=80)
    assert (e.kind, e.output) == ("tree", "log-odds")
    np.testing.assert_allclose(e.model_output(), hgb.decision_function(e.data), atol=1e-6)
    rf = estimator_pipeline(schema, RandomForestClassifier(n_estimators=25, max_depth=5, random_state=0)).fit(X, y)
    e = explain_model(rf, X, n_samples=80)
    assert (e.kind, e.output) == ("tree", "probability")
    np.testing.assert_allclose(e.model_output(), rf.predict_proba(e.data)[:, 1], atol=1e-6)


def test_model_agnostic_shap_on_original_columns(data):
    schema, X, y = data
    knn = estimator_pipeline(schema, KNeighborsClassifier(15)).fit(X, y)
    e = explain_model(knn, X, n_samples=25, seed=2)
    assert (e.kind, e.output, e.values.shape) == ("permutation", "probability", (25, 4))
    np.testing.assert_allclose(e.model_output(), knn.predict_proba(e.data)[:, 1], atol=1e-8)
    np.testing.assert_allclose(e.base_value, knn.predict_proba(X.sample(n=50, random_state=2))[:, 1].mean(), atol=1e-8)


def test_plots_return_figures(data):
    schema, X, y = data
    e = explain_model(estimator_pipeline(schema, LogisticRegression(max_iter=1000)).fit(X, y), X, n_samples=40)
    assert len(plot_importance(e, max_features=2).axes[0].patches) == 2
    assert plot_beeswarm(e).axes
    assert len(plot_local(e, 3, max_features=2).axes[0].patches) == 3  # two columns and the rest


def test_source_columns_follow_the_documented_rule():
    df = pd.DataFrame({"colour": ["a", "b", "a"], "colour_code": ["x", "y", "y"], "age": [1.0, np.nan, 3.0], "n": [1, 2, 3]})
    ct = ColumnTransformer([("num", SimpleImputer(add_indicator=True), ["age", "n"]),
                            ("cat", OneHotEncoder(), ["colour", "colour_code"])], remainder="drop").fit(df)
    assert source_columns(ct) == ["age", "n", "age", "colour", "colour", "colour_code", "colour_code"]
    ct = ColumnTransformer([("num", StandardScaler(), [2])], remainder="passthrough").fit(df[["colour", "colour_code", "age"]].fillna(0))
    assert source_columns(ct) == ["age", "colour", "colour_code"]


def test_explain_model_needs_the_documented_pipeline(data):
    schema, X, y = data
    with pytest.raises(ValueError, match="preprocess"):
        explain_model(Pipeline([("model", LogisticRegression())]).fit(X[["checks"]], y), X)


# ---------------------------------------------------------------- the notebook, headless
def test_notebook_runs_with_the_injected_config(tmp_path):
    config = write_config(tmp_path, data={"sample_rows": 800}, tracking={"uri": f"sqlite:///{tmp_path}/mlruns.db"},
                          rai={"min_group_size": 50, "intended_use": "<b>triage</b> of cases | by staff",
                               "potential_harms": ["wrongful detention", "unequal release rates"]})
    out = tmp_path / "rai.ipynb"
    pm.execute_notebook(str(NBS / "02_rai.ipynb"), str(out), parameters={"CONFIG": str(config), "RUN_DIR": str(tmp_path / "run")},
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    r = read_json(tmp_path / "run" / "rai.json")
    for key in ("groups", "small_groups", "proxies", "proxy_threshold", "strong_proxies", "feasibility", "assessment", "metrics"):
        assert key in r, key
    assert r["rows"] == r["metrics"]["rows"] == r["feasibility"]["rows"] == 640  # 80 % of the 800 sampled rows
    assert r["min_group_size"] == 50
    assert r["small_groups"] and all(int(s.rsplit("(", 1)[1].split()[0]) < 50 for s in r["small_groups"])
    assert r["metrics"]["small_groups"] == len(r["small_groups"])
    assert r["feasibility"]["verdict"] in ("feasible", "weak signal", "not enough data")
    assert r["metrics"]["feasibility_dummy_roc_auc"] == 0.5 and 0.5 < r["metrics"]["feasibility_cv_roc_auc"] <= 1
    stated = {a["key"]: a for a in r["assessment"]}
    assert stated["rai.intended_use"]["text"] == "<b>triage</b> of cases | by staff" and not stated["rai.stakeholders"]["stated"]
    assert r["metrics"]["assessment_items_stated"] == 2
    metrics = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db").get_run(r["mlflow_run_id"]).data.metrics
    assert metrics["rows"] == 640 and metrics["small_groups"] == len(r["small_groups"]) and "outcome_gap.colour_x_sex" in metrics
    outputs = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "&lt;b&gt;triage&lt;/b&gt;" in markdown and "<b>triage" not in markdown  # config text is escaped
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 7  # every plot reached the report
