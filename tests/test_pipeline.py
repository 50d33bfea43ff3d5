"""End to end: papermill parameters, run outputs, MLflow lineage, failures that keep their evidence."""
import configparser, html, json, shutil, subprocess, sys
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import papermill as pm
import pytest
from mlflow.tracking import MlflowClient

from conftest import ARRESTS_ROLES, NBS, REPO, read_json, run_cli, write_config
from mlops_nb.pipeline import STAGES, check_notebook_parameters, gates_junit

STAGE_NOTEBOOKS = sorted(p for p in NBS.glob("0[1-6]_*.ipynb"))


def _parameters_cells(nb):
    return [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


@pytest.mark.parametrize("path", STAGE_NOTEBOOKS, ids=lambda p: p.name)
def test_each_stage_notebook_has_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert len(_parameters_cells(nb)) == 1
    check_notebook_parameters(path)  # declares CONFIG and RUN_DIR


def test_settings_keep_the_parameters_tag_through_nbdev_clean(tmp_path):
    ini = configparser.ConfigParser(); ini.read(REPO / "settings.ini")
    assert ini["DEFAULT"]["allowed_cell_metadata_keys"].strip() == "tags"
    assert ini["DEFAULT"]["clear_all"].strip() == "False"
    copy = tmp_path / "01_eda.ipynb"
    shutil.copy(NBS / "01_eda.ipynb", copy)
    clean = Path(sys.executable).parent / "nbdev_clean"
    subprocess.run([str(clean), "--fname", str(copy)], cwd=REPO, check=True, capture_output=True, timeout=120)
    assert len(_parameters_cells(nbformat.read(copy, as_version=4))) == 1


def test_injected_parameters_are_the_values_used(tmp_path):
    "A sentinel: the injected config asks for 321 rows; the default would use all 5,226."
    config = write_config(tmp_path, data={"sample_rows": 321})
    out = tmp_path / "eda.ipynb"
    pm.execute_notebook(str(NBS / "01_eda.ipynb"), str(out), parameters={"CONFIG": str(config), "RUN_DIR": str(tmp_path / "run")},
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    results = read_json(tmp_path / "run" / "eda.json")
    assert results["metrics"]["rows"] == 321
    assert results["metrics"]["train_rows"] + results["metrics"]["test_rows"] == 321


def test_run_outputs_contract(e2e_run):
    proc, run_dir, s = e2e_run["proc"], e2e_run["run_dir"], e2e_run["summary"]
    assert proc.returncode == 0, proc.stderr
    assert str(run_dir / "index.html") in proc.stdout  # tells the user where the report is
    for stage in s["stages"]:
        for suffix in (".ipynb", ".html", ".json"): assert (run_dir / f"{stage}{suffix}").is_file(), (stage, suffix)
    assert (run_dir / "index.html").is_file() and (run_dir.parent / "index.html").is_file()
    assert s["status"] == "succeeded" and s["run_id"] == run_dir.name
    for key in ("mlflow_run_id", "config_hash", "data_fingerprint", "git_commit", "stages", "metrics", "fairness", "gates", "model"):
        assert key in s
    assert list(s["stages"]) == list(STAGES)
    assert all(v["status"] == "succeeded" and v["seconds"] > 0 and v["html"] == f"{k}.html" for k, v in s["stages"].items())
    eda = read_json(run_dir / "eda.json")
    assert eda["metrics"]["rows"] == 5226 and eda["data_fingerprint"] == s["data_fingerprint"]
    assert run_dir.name in (run_dir.parent / "index.html").read_text()


def test_gates_xml_lists_every_gate_of_the_run(e2e_run):
    "reports/<run_id>/gates.xml (JUnit): one test case per gate of summary.json, same names, same outcomes."
    gates = e2e_run["summary"]["gates"]
    root = ElementTree.parse(e2e_run["run_dir"] / "gates.xml").getroot()
    suites = root.findall("testsuite")
    assert root.tag == "testsuites" and len(suites) == 1 and e2e_run["run_dir"].name in suites[0].get("name")
    cases = suites[0].findall("testcase")
    assert len(gates) >= 4 and [c.get("name") for c in cases] == [g["name"] for g in gates]
    failed = [g["name"] for g in gates if g["passed"] is False]
    assert [c.get("name") for c in cases if c.find("failure") is not None] == failed
    for element in (root, suites[0]):
        assert element.get("tests") == str(len(gates)) and element.get("failures") == str(len(failed))


def test_a_failed_gate_carries_its_value_and_threshold():
    "A failed, a passed, a value-less and a not-evaluated gate (a unit-level call: no second pipeline run)."
    gates = [{"name": "min_primary_metric", "value": 0.5512, "threshold": 0.6, "passed": False},
             {"name": "max_missing_share", "value": 0.4, "threshold": 0.3, "passed": False},
             {"name": "min_lift_over_baseline", "value": None, "threshold": 0.01, "passed": False},
             {"name": "max_demographic_parity_difference[group]", "value": 0.05, "threshold": 0.2, "passed": True},
             {"name": "max_equalized_odds_difference[group]", "value": None, "threshold": 0.2, "passed": None}]
    root = ElementTree.fromstring(gates_junit({"run_id": "r1", "finished": "2026-01-01T00:00:00+00:00", "gates": gates}))
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == ("5", "3", "1", "0")
    failures = {c.get("name"): c.find("failure") for c in root.iter("testcase") if c.find("failure") is not None}
    assert failures["min_primary_metric"].get("message") == "value 0.5512 is below the minimum 0.6"
    assert failures["max_missing_share"].get("message") == "value 0.4 is above the maximum 0.3"
    assert "no value" in failures["min_lift_over_baseline"].get("message")
    assert failures["min_primary_metric"].text.startswith("min_primary_metric: ")
    skipped = [c.get("name") for c in root.iter("testcase") if c.find("skipped") is not None]
    assert skipped == ["max_equalized_odds_difference[group]"]
    empty = ElementTree.fromstring(gates_junit({"run_id": "r2", "gates": []}))
    assert empty.get("tests") == "0" and empty.find("testsuite") is not None


def test_reports_are_code_free_and_offline(e2e_run):
    html = (e2e_run["run_dir"] / "eda.html").read_text()
    assert "<script src" not in html and "cdnjs" not in html and "mathjax" not in html.lower()
    assert "def load_dataset" not in html and "#| export" not in html and "RUN_DIR" not in html  # no code, no parameters
    assert html.count("data:image/png;base64") >= 2  # profile and association plots embedded
    assert "Data dictionary" in html and "Integrity checks" in html


def test_mlflow_parent_and_nested_runs_with_lineage(e2e_run):
    s, folder = e2e_run["summary"], e2e_run["folder"]
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlruns.db'}")
    parent = client.get_run(s["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["mlops_nb.config_hash"] == s["config_hash"] and tags["mlops_nb.data_fingerprint"] == s["data_fingerprint"]
    assert tags["mlops_nb.git_commit"] == s["git_commit"] and tags["mlops_nb.environment"] == "test"
    assert "mlops_nb.package_version" in tags
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags["mlops_nb.stage"] for r in children} == set(s["stages"])
    eda = next(r for r in children if r.data.tags["mlops_nb.stage"] == "eda")
    assert eda.data.metrics["rows"] == 5226 and eda.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(eda.info.run_id)} >= {"eda.ipynb", "eda.html", "eda.json"}


def test_failing_stage_keeps_notebook_and_html(tmp_path):
    "A stage that raises: exit 1, its executed notebook and HTML show the error, the run is failed."
    nbdir = tmp_path / "nbs"; nbdir.mkdir()
    nb = nbformat.read(NBS / "01_eda.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "## Schema" in c.source)
    nb.cells.insert(at, nbformat.v4.new_code_cell('raise RuntimeError("deliberate failure for the test")'))
    nbformat.write(nb, nbdir / "01_eda.ipynb")
    config = write_config(tmp_path)
    proc = run_cli("run", "--config", config, "--stages", "eda", "--notebooks", nbdir, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "deliberate failure for the test" in proc.stderr and "Traceback" not in proc.stderr
    run_dir = next(p for p in (tmp_path / "reports").iterdir() if p.is_dir())
    s = read_json(run_dir / "summary.json")
    assert s["status"] == "failed" and s["stages"]["eda"]["status"] == "failed"
    html = (run_dir / "eda.html").read_text()
    assert "deliberate failure for the test" in html and "failed" in html and "Integrity checks" in html  # ran up to the error
    executed = nbformat.read(run_dir / "eda.ipynb", as_version=4)
    assert "mlops-nb-failure" in executed.cells[0].metadata.get("tags", [])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(s["mlflow_run_id"]).info.status == "FAILED"


def test_reproduce_gives_identical_metrics_and_refuses_changed_data(tmp_path):
    "A small run through the model stages is reproduced metric for metric; after the data changes, reproduce refuses."
    import pandas as pd
    from sklego.datasets import load_arrests
    data = tmp_path / "arrests.csv"
    load_arrests(as_frame=True).head(900).to_csv(data, index=False)
    config = write_config(tmp_path, data={"source": "arrests.csv", **ARRESTS_ROLES}, model={"candidates": ["logistic_regression", "random_forest"], "cv_folds": 3})
    assert run_cli("run", "--config", config, "--stages", "eda,baseline,evaluation", cwd=tmp_path).returncode == 0
    run_id = next(p.name for p in (tmp_path / "reports").iterdir() if p.is_dir())
    proc = run_cli("reproduce", run_id, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "every metric identical" in proc.stdout and "test_roc_auc" in proc.stdout and "baseline.logistic_regression.cv_roc_auc" in proc.stdout
    again = proc.stdout.split("reproduced ")[-1].split(" as ")[1].split(":")[0]
    proc = run_cli("compare", run_id, again, cwd=tmp_path)  # two runs side by side: the same settings, the same metrics
    assert proc.returncode == 0 and "0 setting(s) differ" in proc.stdout, proc.stderr
    page = tmp_path / "reports" / "compare" / f"{run_id}_vs_{again}.html"
    assert page.is_file() and "test_roc_auc" in html.unescape(page.read_text()) and page.name in html.unescape((tmp_path / "reports" / "index.html").read_text())
    pd.read_csv(data).assign(age=lambda d: d.age + 1).to_csv(data, index=False)
    proc = run_cli("reproduce", run_id, cwd=tmp_path)
    assert proc.returncode == 4 and "data changed" in proc.stderr and "Traceback" not in proc.stderr
