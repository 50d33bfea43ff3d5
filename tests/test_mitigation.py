"""Fairness mitigation as candidates (`rai.mitigation`, issue 17 item 4): on data with a known gap, the mitigated
candidates' demographic parity difference is below the unmitigated one's, out of fold and on the test split; with
`model.selection: best_within_fairness_gates` and a gate the unmitigated model fails, a mitigated one is chosen,
registered, loaded back through `evaluation.load_model_version` and predicts identically."""
import gzip, importlib.resources, io, re

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference
from mlflow.models import Model

from conftest import read_json, run_cli, write_config
from mlops_nb.core import load_config, mlflow_client, scratch_context
from mlops_nb.eda import load_schema, load_splits, reference_statistics
from mlops_nb.evaluation import (candidate_fairness, cross_validate_candidates, decision_threshold, fit_model,
                                 load_model_version, log_model, mitigation_of, model_threshold, positive_scores,
                                 register_version, select_candidate)
from mlops_nb.models import build_pipeline, pipeline_columns, target_vector
from mlops_nb.serving import input_schema

BASE = "logistic_regression"
# Selection by fairness: the demographic parity gate decides; the other gates cannot fail the mitigated model.
FAIR_SELECTION = {"max_demographic_parity_difference": 0.1, "max_equalized_odds_difference": None,
                  "min_lift_over_baseline": None, "min_lift_over_champion": None}


def gap_data(rows: int = 1000, seed: int = 0) -> pd.DataFrame:
    "Made-up rows with a known gap: group b has fewer positive outcomes, and `proxy` carries the group."
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b"], rows, p=[0.6, 0.4])
    skill = rng.normal(0, 1, rows)
    outcome = rng.random(rows) < 1 / (1 + np.exp(-(1.2 * skill + 1.5 * (group == "a") - 0.7)))
    return pd.DataFrame({"skill": skill, "proxy": (group == "b") + rng.normal(0, 0.5, rows), "group": group,
                         "y": outcome.astype(int)})


def titanic() -> pd.DataFrame:
    "The 1,309 Titanic passengers (OpenML 40945, shipped offline as a scikit-learn test fixture), leaky columns left out."
    path = importlib.resources.files("sklearn.datasets") / "tests/data/openml/id_40945/data-v1-dl-16826755.arff.gz"
    text = gzip.open(path, "rt").read()
    head, data = re.split(r"(?im)^@data\s*$", text, maxsplit=1)
    columns = re.findall(r"(?im)^@attribute\s+'?([^'\s]+)'?", head)
    frame = pd.read_csv(io.StringIO(data), header=None, names=columns, quotechar='"', na_values="?",
                        keep_default_na=False, comment="%")
    return frame[["pclass", "sex", "age", "sibsp", "parch", "fare", "embarked", "survived"]]


def parity_gap(model, test: pd.DataFrame, schema: dict, cfg, sensitive: str) -> float:
    "The demographic parity difference of a fitted model's decisions on the test split."
    decisions = model.predict(test[pipeline_columns(model, schema)])
    return demographic_parity_difference(target_vector(test, cfg), decisions, sensitive_features=test[sensitive])


def test_mitigated_candidates_narrow_the_gap_on_titanic():
    "A real dataset with a group column: both mitigations narrow the sex gap out of fold and on the test split."
    ctx = scratch_context(titanic(), {"model": {"candidates": [BASE], "cv_folds": 3},
                                      "rai": {"mitigation": ["exponentiated_gradient", "threshold_optimizer"]}},
                          target="survived", sensitive_features=["sex"])
    train, test = load_splits(ctx)
    schema, cfg = load_schema(ctx), ctx.config
    found = cross_validate_candidates(train, schema, cfg)
    out_of_fold = candidate_fairness(found, schema, cfg)["demographic_parity_difference"]
    on_test = {name: parity_gap(fit_model(train, schema, cfg, pipeline), test, schema, cfg, "sex")
               for name, pipeline in found.pipelines.items()}
    assert list(found.table.index) == [BASE, f"{BASE}+exponentiated_gradient", f"{BASE}+threshold_optimizer"]
    assert out_of_fold[BASE] > 0.5 and on_test[BASE] > 0.5  # survival differs a lot by sex, and the model follows it
    for method in ("exponentiated_gradient", "threshold_optimizer"):
        assert out_of_fold[f"{BASE}+{method}"] < out_of_fold[BASE] / 4, out_of_fold
        assert on_test[f"{BASE}+{method}"] < on_test[BASE] / 4, on_test
    assert found.outputs[f"{BASE}+threshold_optimizer"].shape == (len(train), 2)  # out of fold, the same rows


def test_exponentiated_gradient_is_chosen_registered_and_loaded_back():
    """Selection within the fairness gates picks the reduction; its decision threshold (youden) wraps it; registered
    with skops, it loads back and predicts identically, and needs no sensitive feature to predict."""
    sections = {"model": {"candidates": [BASE], "cv_folds": 3, "selection": "best_within_fairness_gates",
                          "exclude_features": ["group"], "threshold": "youden"},
                "rai": {"mitigation": ["exponentiated_gradient"]}, "gates": FAIR_SELECTION}
    ctx = scratch_context(gap_data(), sections, target="y", sensitive_features=["group"])
    train, test = load_splits(ctx)
    schema, cfg = load_schema(ctx), ctx.config
    found = cross_validate_candidates(train, schema, cfg)
    fairness = candidate_fairness(found, schema, cfg)
    chosen, because = select_candidate(found.table, fairness, cfg)
    assert fairness.loc[BASE, "demographic_parity_difference"] > 0.1  # the unmitigated model fails the gate
    assert chosen == f"{BASE}+exponentiated_gradient"
    assert because == "the best cross-validated roc_auc within the fairness gates"
    threshold = decision_threshold(found, chosen, cfg)[0]
    pipeline = fit_model(train, schema, cfg, found.pipelines[chosen], threshold)
    columns = pipeline_columns(pipeline, schema)
    assert columns == ["skill", "proxy"] and threshold != 0.5
    unmitigated = fit_model(train, schema, cfg, BASE)
    assert parity_gap(pipeline, test, schema, cfg, "group") < parity_gap(unmitigated, test, schema, cfg, "group")

    reference = reference_statistics(train, schema, scores=positive_scores(pipeline, train[columns]), seed=cfg.split.seed)
    model = register_version(ctx, log_model(ctx, pipeline, train[columns], reference), [])
    loaded = load_model_version(mlflow_client(ctx.tracking_uri), cfg.model_name, model["version"])
    assert model["aliases"] == ["challenger"] and model_threshold(loaded.model) == threshold
    np.testing.assert_array_equal(loaded.model.predict(test[columns]), pipeline.predict(test[columns]))
    np.testing.assert_allclose(loaded.model.predict_proba(test[columns]), pipeline.predict_proba(test[columns]),
                               atol=1e-12)
    assert Model.load(str(loaded.path / "MLmodel")).signature.inputs.input_names() == ["skill", "proxy"]


@pytest.fixture(scope="module")
def threshold_run(tmp_path_factory):
    "One `mlops-nb run` through eda..evaluation on the gap data, with the threshold optimizer and selection by fairness."
    folder = tmp_path_factory.mktemp("mitigation")
    gap_data().to_csv(folder / "gap.csv", index=False)
    config = write_config(folder, data={"source": "gap.csv", "target": "y", "sensitive_features": ["group"]},
                          model={"candidates": [BASE], "cv_folds": 3, "selection": "best_within_fairness_gates",
                                 "exclude_features": ["group"]},
                          rai={"mitigation": ["threshold_optimizer"]}, gates=FAIR_SELECTION)
    proc = run_cli("run", "--config", config, "--stages", "eda,rai,baseline,evaluation", cwd=folder)
    runs = [p for p in (folder / "reports").iterdir() if p.is_dir()]
    assert proc.returncode == 0 and len(runs) == 1, proc.stderr
    run_dir = runs[0]
    return {"run_dir": run_dir, "cfg": load_config(run_dir / "config.yaml"),
            "results": read_json(run_dir / "evaluation.json"),
            "tracking_uri": read_json(run_dir / "context.json")["tracking_uri"]}


def test_run_chooses_the_threshold_optimizer_within_the_gates(threshold_run):
    results, name = threshold_run["results"], f"{BASE}+threshold_optimizer"
    parity = {k: v["demographic_parity_difference"] for k, v in results["candidate_fairness"].items()}
    assert results["chosen"] == name and results["mitigated"][name]["method"] == "threshold_optimizer"
    assert parity[BASE] > 0.1 >= parity[name], parity
    assert results["threshold"] == 0.5 and "each group's own threshold" in results["threshold_reason"]
    assert all(g["passed"] for g in results["summary"]["gates"]) and "challenger" in results["summary"]["model"]["aliases"]
    assert "threshold_optimizer" in (threshold_run["run_dir"] / "evaluation.html").read_text()


def test_run_registers_a_model_that_needs_the_group_to_predict_and_loads_back(threshold_run):
    run_dir, cfg, results = threshold_run["run_dir"], threshold_run["cfg"], threshold_run["results"]
    train, test = (pd.read_parquet(run_dir / "cache" / f"{part}.parquet") for part in ("train", "test"))
    schema = read_json(run_dir / "cache" / "schema.json")
    loaded = load_model_version(mlflow_client(threshold_run["tracking_uri"]), cfg.model_name, results["model"]["version"])
    assert Model.load(str(loaded.path / "MLmodel")).signature.inputs.input_names() == ["skill", "proxy", "group"]
    assert [c.name for c in input_schema(loaded)] == ["skill", "proxy", "group"]  # the service checks the group too
    pipeline = mitigation_of(build_pipeline(schema, BASE, cfg.split.seed), "threshold_optimizer", BASE, cfg)
    in_memory = fit_model(train, schema, cfg, pipeline, results["threshold"])
    columns = ["skill", "proxy", "group"]
    np.testing.assert_array_equal(loaded.model.predict(test[columns]), in_memory.predict(test[columns]))
    np.testing.assert_allclose(loaded.model.predict_proba(test[columns]), in_memory.predict_proba(test[columns]), atol=1e-12)
    unmitigated = parity_gap(fit_model(train, schema, cfg, BASE), test, schema, cfg, "group")
    registered = results["summary"]["fairness"]["group"]["demographic_parity_difference"]
    assert registered == pytest.approx(parity_gap(loaded.model, test, schema, cfg, "group"))
    assert registered < unmitigated / 2, (registered, unmitigated)


@pytest.mark.parametrize("override, message", [
    ("data.sensitive_features=[]", "rai.mitigation: needs the groups to mitigate for"),
    ("data.task=regression", "rai.mitigation: fairness mitigation needs a two-class target"),
])
def test_mitigation_where_it_cannot_apply_is_a_config_error(tmp_path, override, message):
    gap_data(200).to_csv(tmp_path / "gap.csv", index=False)
    config = write_config(tmp_path, data={"source": "gap.csv", "target": "y", "sensitive_features": ["group"]},
                          rai={"mitigation": ["exponentiated_gradient"]})
    proc = run_cli("run", "--config", config, "--set", override, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
