"""Smoke of every benchmark at a tiny size (`make bench-smoke`): each script runs end to end and its figures make sense.
The Evidently comparison is skipped, with the reason, when benchmarks/.venv-evidently is absent; ours still runs.
The serving comparison with our service runs once `mlops-nb serve` exists; mlflow's side always runs."""
import json, shutil, sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_drift, bench_false_drift, bench_pipeline, bench_scaling, bench_serving, report  # noqa: E402
from datagen import CATEGORICAL, NEAR, NUMERIC  # noqa: E402


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    out = tmp_path_factory.mktemp("drift")
    no_evidently = bench_drift.evidently_available() is not None
    return read(bench_drift.main(["--smoke", "--out", str(out), *(["--no-evidently"] if no_evidently else [])]))


def test_drift_ours_matches_the_exact_computation(drift):
    r = drift["sizes"][0]
    assert r["rows_per_side"] == 2000 and set(r["ours"]["columns"]) == set(NUMERIC + CATEGORICAL + NEAR)
    assert {v["test"] for v in r["ours"]["columns"].values()} == {"wasserstein", "jensenshannon"}  # above 1,000 reference rows
    assert r["ours_vs_exact_all"]["decisions_differ"] == [] and r["ours_vs_exact"]["max_score_difference"] < 0.005
    assert r["chunked_vs_ours"]["decisions_differ"] == [] and r["chunked_vs_ours"]["max_score_difference"] < 1e-9
    drifted = {c for c, v in r["exact_scipy"]["columns"].items() if v["drifted"]}
    assert drifted - set(NEAR) == {"n00", "n03", "n05", "n12", "n14", "c1", "c4"}  # the shifts planned in datagen
    near = r["near_threshold"]["exact_scores"].values()
    assert all(abs(v - 0.1) < 0.03 for v in near)  # near the threshold (2,000 rows: noisy)
    assert 50 * 2**20 < r["ours"]["peak_rss_bytes"] < 2 * 2**30 and r["ours"]["total_seconds"] > 0


def test_drift_false_drift_of_ours_stays_small(drift):
    f = drift["false_drift"][0]
    assert (f["reference_rows"], f["current_rows"], f["seeds"]) == (1000, 1000, 3)
    assert f["ours"]["tests"] == ["chisquare", "ks"]  # small reference: two-sample tests
    assert f["ours"]["rate_numeric"] <= 0.2 and f["ours"]["rate_categorical"] <= 0.2  # 3 seeds only: loose


def test_drift_against_evidently(drift):
    if drift["evidently_skipped"]: pytest.skip(f"Evidently comparison skipped: {drift['evidently_skipped']}")
    r = drift["sizes"][0]
    assert set(r["ours_vs_evidently"]["decisions_differ"]) <= set(NEAR)  # only a column near the threshold may differ
    assert r["speedup_vs_evidently"]["with_reference_build_one_batch"] < r["speedup_vs_evidently"]["ours"]
    assert r["evidently"]["drifted_columns"]["count"] == sum(v["drifted"] for v in r["evidently"]["columns"].values())
    assert drift["false_drift"][0]["evidently"]["tests"] == ["K-S p_value", "chi-square p_value"]


def test_false_drift_by_batch_size(tmp_path):
    no_evidently = bench_drift.evidently_available() is not None
    d = read(bench_false_drift.main(["--smoke", "--out", str(tmp_path), *(["--no-evidently"] if no_evidently else [])]))
    small, large = d["sizes"]
    assert (small["rows"], large["rows"]) == (100, 1000) and small["ours"]["tests"] == ["chisquare", "ks"]
    assert large["ours"]["tests"] == ["jensenshannon", "wasserstein"] and large["ours"]["max_distance_error"] < 0.005
    assert small["ours"]["rate_all"] <= 0.2  # 10 batches only: loose
    assert "## False drift by batch size" in report.false_drift_section(d)
    if no_evidently:
        pytest.skip(f"Evidently comparison skipped: {bench_drift.evidently_available()}")
    assert small["evidently"]["rate_all"] > small["ours"]["rate_all"]  # distances on 100 rows


@pytest.mark.slow  # a pipeline run with a per-cell breakdown: `make test-slow`
def test_pipeline_breakdown(tmp_path):
    d = read(bench_pipeline.main(["--smoke", "--out", str(tmp_path)]))
    r = d["run"]
    assert r["status"] == "succeeded" and list(r["breakdown"]) == ["eda"] and r["wall_seconds"] > r["stage_seconds"]["eda"]
    b = r["breakdown"]["eda"]
    assert 0 < b["kernel_start"] < 30 and b["compute"] > 0 and b["mlflow"] > 0 and b["imports"] > 0
    assert 0 < r["overhead_share"] < 1 and r["render"]["stages"]["eda"]["seconds"] > 0
    assert len(d["kernel_api"]["per_notebook_seconds"]) == 1 and d["papermill_cli_empty_notebook_seconds"] > 0
    assert d["mlflow"]["seconds"]["create_store"] > 0 and d["mlflow"]["seconds"]["log_batch_50_metrics"] > 0


def test_cell_kinds():
    kind = bench_pipeline.cell_kind
    assert kind("#| export\nfrom __future__ import annotations\nimport numpy as np") == "imports"
    assert kind("#| hide\nfrom fastcore.test import test_eq, test_fail") == "imports"
    assert kind('finish_stage(ctx, "eda", {})') == "mlflow" and kind("#| hide\ntest_eq(1, 1)") == "checks"
    assert kind("ctx = run_context(CONFIG, RUN_DIR)\ncfg = ctx.config") == "context" and kind("fig = plot(x)") == "compute"


@pytest.mark.slow  # two full pipeline runs: `make test-slow`; `make bench` runs the script itself
def test_scaling_two_sizes_and_plot(tmp_path):
    d = read(bench_scaling.main(["--smoke", "--out", str(tmp_path)]))
    assert [r["rows"] for r in d["sizes"]] == [500, 1000] and all(r["status"] == "succeeded" for r in d["sizes"])
    assert all(r["stage_peak_rss_bytes"]["eda"] > 50 * 2**20 for r in d["sizes"])  # the kernel's own peak was seen
    assert "500->1000" in d["growth"] and (tmp_path / "scaling.png").stat().st_size > 5000


def test_serving_short_load(tmp_path):
    "The wrk serving smoke: ours and both mlflow services under a 1 s load; `make test` installs wrk (make system-packages)."
    assert shutil.which("wrk"), "wrk is not installed: `make system-packages` installs it (apt-get install wrk)"
    d = read(bench_serving.main(["--smoke", "--out", str(tmp_path)]))
    (r,) = d["rounds"]
    assert r["order"] == ["ours", "mlflow_one_thread", "mlflow_as_logged"]
    for name in r["order"]:
        assert [c["concurrency"] for c in r[name]["cases"]] == [1, 16, 4] and all(c["requests"] > 0 for c in r[name]["cases"])
        assert r[name]["start_to_ping_seconds"] > 0
    assert all(c["errors"] == 0 for c in r["ours"]["cases"])
    assert r["ours"]["inference_log_complete"], (r["ours"]["inference_log_rows"], r["ours"]["rows_answered_by_wrk"])
    assert d["one_thread_changed"] and d["in_process_predict_one_thread"]["rows_1"]["median_ms"] > 0  # the forest's n_jobs set to 1
    assert set(d["ratios"]) == {"mlflow_one_thread", "mlflow_as_logged"}
    text = bench_serving.report_section(d)
    assert "### Targets" in text and "mlflow, the same one-thread model" in text and "load average" in text


def test_report_writes_every_section(tmp_path, drift):
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    text = report.write_readme(tmp_path, tmp_path / "README.md").read_text()
    assert "## Drift" in text and "| 2,000 |" in text and "False drift" in text
    assert "Not run yet" in text  # the other results are absent from this folder
