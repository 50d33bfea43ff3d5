"""The deploy stage of a real run (the readiness report of the run's version), promotion (gates, approvals, rollback,
serialized alias moves), batch scoring (CSV/Parquet, chunks, invalid rows) and the Dockerfile. Real MLflow registry in
tmp_path: three versions registered once per module (logistic regression and random forest pass their gate, the dummy
model fails it)."""
import html, shutil, subprocess, threading, tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import REPO, read_json, write_config
from mlops_nb.models import model_columns
from mlops_nb.cli import app
from mlops_nb.core import load_config, mlflow_client, run_context
from mlops_nb.registry import PREVIOUS, PromotionRefused, promote_version, promotion_history, quick_version
from mlops_nb.scoring import score_file
from mlops_nb.eda import load_schema, load_splits
from mlops_nb.evaluation import CHALLENGER, CHAMPION, decisions, load_model_version, positive_scores


def build_registry(folder: Path, sample_rows: int = 1500) -> SimpleNamespace:
    "A project folder with a config and a registry: v1 logistic regression (champion), v2 random forest (challenger), v3 dummy (gate failed)."
    config = write_config(folder, data={"sample_rows": sample_rows})
    ctx = run_context(config, folder / "run")
    train, test = load_splits(ctx)
    schema = load_schema(ctx)
    versions = {e: quick_version(ctx, train, test, schema, e, 0.01)["version"] for e in ("logistic_regression", "random_forest", "dummy")}
    promote_version(ctx.config, versions["logistic_regression"], "fixture", "first champion")
    return SimpleNamespace(folder=folder, config=config, cfg=ctx.config, client=mlflow_client(ctx.tracking_uri), name=ctx.config.model_name,
                           versions=versions, train=train, test=test, columns=model_columns(schema))


def copy_registry(reg: SimpleNamespace, folder: Path) -> SimpleNamespace:
    "An independent copy of the registry database (aliases and tags), sharing the model files; for tests that move aliases."
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(reg.folder / "mlruns.db", folder / "mlruns.db")
    cfg = load_config(reg.config, [f"tracking.uri=sqlite:///{folder / 'mlruns.db'}"])
    return SimpleNamespace(**{**vars(reg), "folder": folder, "cfg": cfg, "client": mlflow_client(f"sqlite:///{folder / 'mlruns.db'}")})


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("deploy"))


def cli(*args):
    "Run the CLI in-process; returns (exit code, stdout, stderr)."
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def aliases(reg) -> dict:
    return {a: str(v) for a, v in reg.client.get_registered_model(reg.name).aliases.items()}


# ---------------------------------------------------------------- the deploy stage of a real run

def test_the_deploy_stage_serves_scores_and_times_the_runs_own_version(e2e_run):
    "The shared run's deploy.json: the service answered like the model on every test row, latency, the batch scorer."
    run_dir, model = e2e_run["run_dir"], e2e_run["summary"]["model"]
    deploy = read_json(run_dir / "deploy.json")
    test_rows = read_json(run_dir / "eda.json")["metrics"]["test_rows"]
    assert deploy["run_version"]["version"] == model["version"] and "challenger" in deploy["run_version"]["aliases"]
    parity = deploy["parity"]
    assert parity["passed"] is True and (parity["rows"], parity["mismatched_rows"], parity["refused_rows"]) == (test_rows, 0, 0)
    assert parity["approval_override"].startswith("no approval recorded")  # not promoted: served with the explicit override
    for size in ("1_rows", "1000_rows"):
        figures = deploy["latency"][size]
        assert figures["requests"] >= 5 and 0 < figures["median_ms"] <= figures["p95_ms"], (size, figures)
    batch = deploy["batch_scoring"]
    assert (batch["rows"], batch["scored"], batch["invalid_rows"], batch["matches_in_process"]) == (test_rows, test_rows, 0, True)
    assert batch["columns_written"] == ["probability", "prediction", "model_version"]
    scored = pd.read_parquet(batch["output"])
    assert Path(batch["output"]).parent == run_dir and len(scored) == test_rows
    assert set(scored.model_version) == {str(model["version"])}
    assert deploy["champion"]["version"] is None and "No champion yet" in deploy["champion"]["note"]
    assert deploy["metrics"]["parity_passed"] == 1.0 and deploy["metrics"]["batch_rows_scored"] == float(test_rows)
    assert all(type(v) is float for v in deploy["metrics"].values()), deploy["metrics"]


def test_the_deploy_report_names_the_version_and_the_promote_command(e2e_run):
    run_dir, model = e2e_run["run_dir"], e2e_run["summary"]["model"]
    deploy = read_json(run_dir / "deploy.json")
    page = html.unescape((run_dir / "deploy.html").read_text(encoding="utf-8"))
    assert f"models:/{model['name']}/{model['version']}" in page
    assert deploy["promote_command"].startswith(f"mlops-nb promote {model['version']} --config ")
    assert deploy["promote_command"] in page
    assert "The service's answers equal the model's own" in page and "allow_unapproved" in page
    for column in read_json(run_dir / "eda.json")["schema"]["features"][:3]:  # the requests are built from the model's inputs
        assert f'"{column}"' in page, column


# ---------------------------------------------------------------- promotion

def test_promote_refuses_a_version_whose_gates_failed_and_changes_nothing(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    before = aliases(reg)
    code, out, err = cli("promote", reg.versions["dummy"], "--approver", "Ada", "--reason", "try", "--config", reg.config,
                         "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}")
    assert code == 1
    assert err.strip() == (f"error: models:/{reg.name}/{reg.versions['dummy']}: not promoted (gates failed: min_lift_over_dummy); "
                           f"champion stays version {reg.versions['logistic_regression']}")
    assert aliases(reg) == before == {CHAMPION: "1", CHALLENGER: "2"}
    assert not any(k.startswith("mlops_nb.approval") for k in reg.client.get_model_version(reg.name, reg.versions["dummy"]).tags)


def test_promote_records_the_approval_and_rollback_restores_the_previous_champion(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    where = ["--config", reg.config, "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}"]
    code, out, err = cli("promote", "2", "--approver", "Grace Hopper", "--reason", "better forest; fairness reviewed", *where)
    assert code == 0, err
    assert out.startswith(f"champion: models:/{reg.name}/2 (was 1); promote by Grace Hopper at ")
    assert aliases(reg) == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "2"}
    tags = reg.client.get_model_version(reg.name, "2").tags
    assert (tags["mlops_nb.approval.by"], tags["mlops_nb.approval.reason"], tags["mlops_nb.approval.replaced"]) == \
        ("Grace Hopper", "better forest; fairness reviewed", "1")
    assert pd.Timestamp(tags["mlops_nb.approval.time"]).tzinfo is not None
    run_id = reg.client.get_model_version(reg.name, "2").run_id
    assert tags["mlops_nb.evidence.run"] == f"runs:/{run_id}" and tags["mlops_nb.evidence.run_folder"].startswith("run/")

    code, out, err = cli("promote", "--rollback", "2", "--approver", "Grace Hopper", "--reason", "complaints", *where)
    assert code == 0, err
    assert aliases(reg) == {CHAMPION: "1", CHALLENGER: "2"}  # previous cleared
    v1, v2 = (reg.client.get_model_version(reg.name, v).tags for v in ("1", "2"))
    assert (v1["mlops_nb.rollback.by"], v1["mlops_nb.rollback.reason"], v1["mlops_nb.rollback.replaced"]) == ("Grace Hopper", "complaints", "2")
    assert v2["mlops_nb.rolled_back.reason"] == "complaints"
    history = promotion_history(reg.client, reg.cfg)
    assert history[["action", "version", "replaced", "approver"]].values.tolist() == [
        ["promote", "1", "None", "fixture"], ["promote", "2", "1", "Grace Hopper"], ["rollback", "1", "2", "Grace Hopper"]]

    code, _, err = cli("promote", "--rollback", "--approver", "Grace Hopper", "--reason", "again", *where)
    assert code == 1 and "no previous champion" in err and aliases(reg) == {CHAMPION: "1", CHALLENGER: "2"}


@pytest.mark.parametrize("args, code, message", [
    (["2", "--approver", "  ", "--reason", "r"], 2, "--approver: required and must not be blank"),
    (["two", "--approver", "a", "--reason", "r"], 2, "VERSION: expected a version number"),
    (["99", "--approver", "a", "--reason", "r"], 1, "models:/arrests/99: no such registered model version"),
    (["1", "--approver", "a", "--reason", "r"], 1, "models:/arrests/1 is already the champion"),
    (["--rollback", "2", "--approver", "a", "--reason", "r"], 1, "version 2 is not the champion"),
])
def test_promote_refusals_are_one_line_and_change_nothing(registry, args, code, message):
    before = aliases(registry)
    got, out, err = cli("promote", *args, "--config", registry.config)
    assert got == code and message in err and len(err.strip().splitlines()) == 1, err
    assert aliases(registry) == before


def test_concurrent_promotions_are_serialized(registry, tmp_path):
    "Eight threads promote versions 1 and 2 in turn: every call either succeeds or is refused cleanly; the aliases stay consistent."
    reg = copy_registry(registry, tmp_path)
    outcomes, errors = [], []
    def promote(i):
        try: outcomes.append(promote_version(reg.cfg, 1 + i % 2, f"approver {i}", "race"))
        except PromotionRefused as e: outcomes.append(str(e))
        except Exception as e: errors.append(repr(e))
    threads = [threading.Thread(target=promote, args=(i,)) for i in range(8)]
    for t in threads: t.start()
    for t in threads: t.join(120)
    assert errors == [] and len(outcomes) == 8
    done = [o for o in outcomes if isinstance(o, dict)]
    assert done and all("already the champion" in o for o in outcomes if isinstance(o, str))
    history = promotion_history(reg.client, reg.cfg)  # recorded under the lock: in promotion order
    assert len(history) == 1 + len(done)  # the fixture's promotion, then these
    assert (history.version.iloc[1:] != history.replaced.iloc[1:]).all()  # each replaced a different champion
    final = aliases(reg)
    assert (final[CHAMPION], final[PREVIOUS]) == (history.version.iloc[-1], history.replaced.iloc[-1])


# ---------------------------------------------------------------- batch scoring

def in_memory(reg, frame: pd.DataFrame, version: str = "1"):
    model = load_model_version(reg.client, reg.name, version).model
    scores = positive_scores(model, frame[reg.columns])
    return scores, decisions(scores)


def test_batch_scores_csv_and_parquet_like_in_memory(registry, tmp_path):
    rows = registry.test.assign(id=[f"{i:05d}" for i in range(len(registry.test))])  # ids with leading zeros stay text
    rows.to_csv(tmp_path / "in.csv", index=False)
    rows.to_parquet(tmp_path / "in.parquet", index=False)
    scores, predictions = in_memory(registry, rows)
    for source, target in (("in.csv", "out.csv"), ("in.csv", "out.parquet"), ("in.parquet", "out.csv"), ("in.parquet", "out.parquet")):
        summary = score_file(registry.cfg, tmp_path / source, tmp_path / target, chunk_rows=100, progress=False)
        out = pd.read_csv(tmp_path / target, dtype={"id": str}) if target.endswith(".csv") else pd.read_parquet(tmp_path / target)
        assert list(out.columns) == list(rows.columns) + ["probability", "prediction", "model_version"], (source, target)
        assert summary["rows"] == summary["scored"] == len(rows) and summary["invalid_rows"] == 0
        np.testing.assert_allclose(out.probability.to_numpy(), scores, rtol=0, atol=1e-12)  # chunks of 100 vs all rows at once
        assert out.prediction.tolist() == predictions.tolist() and set(out.model_version.astype(str)) == {"1"}
        assert out.id.tolist() == rows.id.tolist() and out.sex.tolist() == rows.sex.tolist()
        assert out.age.astype(int).tolist() == rows.age.tolist()


def test_an_invalid_row_is_reported_by_number_and_nothing_is_written(registry, tmp_path):
    rows = registry.test.head(300).astype({"age": object, "checks": object})
    rows.loc[7, "age"], rows.loc[212, "checks"] = "forty", 2.5
    rows.to_csv(tmp_path / "in.csv", index=False)
    code, out, err = cli("score", tmp_path / "in.csv", tmp_path / "out.csv", "--config", registry.config, "--chunk-rows", "100")
    assert code == 4, err
    assert "2 invalid row(s)" in err and "age: expected an integer, got text 'forty' in row 7" in err
    assert "checks: expected an integer, got 2.5 in row 212" in err
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob(".out.csv*"))

    code, out, err = cli("score", tmp_path / "in.csv", tmp_path / "out.csv", "--config", registry.config, "--on-invalid", "skip", "--chunk-rows", "100")
    assert code == 0, err
    scored = pd.read_csv(tmp_path / "out.csv")
    assert len(scored) == 298 and "skipped 2 invalid row(s)" in err and "scored 298 of 300 rows" in out
    valid = registry.test.head(300).drop(index=[7, 212])
    assert scored.prediction.tolist() == in_memory(registry, valid)[1].tolist()
    rejected = pd.read_csv(tmp_path / "out.csv.rejected.csv")
    assert rejected.to_dict("records") == [{"row": 7, "column": "age", "message": "expected an integer, got text 'forty'"},
                                           {"row": 212, "column": "checks", "message": "expected an integer, got 2.5"}]


def test_batch_refuses_a_missing_column_an_empty_file_and_a_missing_model(registry, tmp_path):
    registry.test.drop(columns="age").head(10).to_csv(tmp_path / "no_age.csv", index=False)
    code, _, err = cli("score", tmp_path / "no_age.csv", tmp_path / "o.csv", "--config", registry.config)
    assert code == 4 and "missing column(s) ['age']" in err
    (tmp_path / "empty.csv").write_text("")
    code, _, err = cli("score", tmp_path / "empty.csv", tmp_path / "o.csv", "--config", registry.config)
    assert code == 4 and "the file is empty" in err
    registry.test.head(0).to_csv(tmp_path / "header.csv", index=False)
    code, _, err = cli("score", tmp_path / "header.csv", tmp_path / "o.csv", "--config", registry.config)
    assert code == 4 and "no rows to score" in err
    registry.test.head(5).assign(prediction=1).to_csv(tmp_path / "clash.csv", index=False)
    code, _, err = cli("score", tmp_path / "clash.csv", tmp_path / "o.csv", "--config", registry.config)
    assert code == 4 and "already has the output column(s) ['prediction']" in err
    code, _, err = cli("score", tmp_path / "no_age.csv", tmp_path / "o.csv", "--config", registry.config, "--model", "arrests@nope")
    assert code == 1 and "models:/arrests@nope" in err
    assert not (tmp_path / "o.csv").exists()


def test_batch_memory_stays_flat_as_the_file_grows(registry, tmp_path):
    "Peak traced memory for a 4x larger file stays about the same: the file is read, scored and written in chunks."
    base = registry.test[registry.columns]
    peaks = {}
    for n in (5_000, 20_000):
        base.sample(n, replace=True, random_state=0).to_csv(tmp_path / f"{n}.csv", index=False)
        tracemalloc.start()
        score_file(registry.cfg, tmp_path / f"{n}.csv", tmp_path / f"{n}.out.csv", chunk_rows=1_000, progress=False)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[20_000] < 1.5 * peaks[5_000], peaks


# ---------------------------------------------------------------- Dockerfile

def test_dockerfile_runs_the_service_as_a_non_root_user():
    text = (REPO / "Dockerfile").read_text()
    assert text.splitlines()[0].startswith("FROM python:3.11-slim")
    assert "-c requirements.lock" in text and "\nUSER " in text and "USER root" not in text
    assert 'CMD ["mlops-nb", "serve", "--host", "0.0.0.0"]' in text


def _docker_available() -> bool:
    try: return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError): return False


@pytest.mark.skipif(not _docker_available(), reason="no Docker engine here (`docker info` failed)")
def test_docker_image_builds():
    tag = "mlops-nb-test:latest"
    proc = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    user = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True, timeout=120)
    assert user.stdout.strip() not in ("", "0")
