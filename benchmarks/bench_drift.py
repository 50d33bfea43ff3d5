"""Drift: ours (stored reference statistics) vs Evidently 0.7 DataDriftPreset vs plain scipy, at 10k / 100k / 1M rows
per side × 20 columns; and the false drift rate on unshifted data with a small reference.

Each measurement is its own process: time after imports and peak RSS of the whole process. Ours monitors a batch
given the stored reference (as `mlops-nb monitor` does); Evidently needs both full samples. Writes results/drift.json.
"""
from __future__ import annotations

import shutil, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EVIDENTLY_PYTHON, HERE, MIB, parser, python, run_worker, write_result  # noqa: E402
from datagen import CATEGORICAL, NEAR, NEAR_NUMERIC, NUMERIC, drift_pair  # noqa: E402

TARGETS = {"speedup_vs_evidently": 50, "memory_share_of_evidently": 1 / 3, "max_numeric_score_error": 0.005,
           "chunked_peak_mib": 500, "false_drift_rate": 0.05}


def evidently_available() -> str | None:
    "None when the Evidently venv is there, else why not."
    return None if EVIDENTLY_PYTHON.exists() else f"{EVIDENTLY_PYTHON} is absent (`make install-evidently` creates it; `make test` and `make bench` do)"


def compare(a: dict, b: dict, numeric_only: bool = False) -> dict:
    "Columns where the decisions differ, and the largest score difference (numeric columns, or all)."
    cols = [c for c in a if c in b]
    differ = [c for c in cols if a[c]["drifted"] != b[c]["drifted"]]
    scored = [c for c in cols if (c in NUMERIC or c in NEAR_NUMERIC or not numeric_only) and a[c]["score"] is not None and b[c]["score"] is not None]
    return {"columns": len(cols), "decisions_differ": differ,
            "max_score_difference": max((abs(a[c]["score"] - b[c]["score"]) for c in scored), default=None)}


def reference_build_seconds(r: dict) -> float:
    "Building the stored reference statistics: read the reference, compute, write (what training pays once)."
    s = r["reference_statistics"]
    return s["read_seconds"] + s["compute_seconds"] + s["write_seconds"]


def speedups(r: dict) -> dict:
    """Evidently's time over ours: with the stored reference (monitoring as it runs), and with the reference build counted,
    for one batch and amortised over 10 (Evidently rereads the reference for each batch; ours builds it once)."""
    e, o, build = r["evidently"]["total_seconds"], r["ours"]["total_seconds"], reference_build_seconds(r)
    return {"ours": e / o, "ours_chunked": e / r["ours_chunked"]["total_seconds"],
            "with_reference_build_one_batch": e / (o + build), "with_reference_build_amortised_10": e / (o + build / 10)}


def repeat(argv: list, times: int) -> dict:
    "The run with the median total time of `times` runs (each its own process), with every run's total time."
    runs = sorted((run_worker(argv) for _ in range(times)), key=lambda r: r["total_seconds"])
    return {**runs[len(runs) // 2], "repeats_total_seconds": [r["total_seconds"] for r in runs],
            "repeats_peak_rss_bytes": [r["peak_rss_bytes"] for r in runs]}


def one_size(n: int, work: Path, with_evidently: bool, repeats: int) -> dict:
    """Generate the pair, then reference statistics, ours (whole and chunked), exact scipy and Evidently, back to back.
    Ours and Evidently run `repeats` times each (medians kept), Evidently once at 1M rows (it takes minutes)."""
    ref, cur = drift_pair(n, seed=0)
    ref_path, cur_path, stats = work / f"ref_{n}.parquet", work / f"cur_{n}.parquet", work / f"stats_{n}.json"
    ref.to_parquet(ref_path, row_group_size=131_072); cur.to_parquet(cur_path, row_group_size=131_072)
    del ref, cur
    w = [python(), HERE / "drift_worker.py"]
    out = {"rows_per_side": n, "columns": {"numeric": len(NUMERIC), "categorical": len(CATEGORICAL)},
           "parquet_bytes": cur_path.stat().st_size}
    out["reference_statistics"] = run_worker(w + ["reference", ref_path, stats])
    out["ours"] = repeat(w + ["ours", stats, cur_path], repeats)
    out["ours_chunked"] = repeat(w + ["chunked", stats, cur_path], repeats)
    out["exact_scipy"] = run_worker(w + ["exact", ref_path, cur_path])
    out["evidently"] = (repeat([EVIDENTLY_PYTHON, HERE / "evidently_worker.py", "drift", ref_path, cur_path], repeats if n < 1_000_000 else 1)
                        if with_evidently else None)
    out["ours_vs_exact"] = compare(out["ours"]["columns"], out["exact_scipy"]["columns"], numeric_only=True)
    out["ours_vs_exact_all"] = compare(out["ours"]["columns"], out["exact_scipy"]["columns"])
    out["chunked_vs_ours"] = compare(out["ours_chunked"]["columns"], out["ours"]["columns"])
    near = {c: out["exact_scipy"]["columns"][c]["score"] for c in NEAR if c in out["exact_scipy"]["columns"]}
    out["near_threshold"] = {"exact_scores": near, "ours_vs_exact_differ": [c for c in near if c in out["ours_vs_exact_all"]["decisions_differ"]]}
    if out["evidently"]:
        e, o = out["evidently"], out["ours"]
        out["ours_vs_evidently"] = compare(o["columns"], e["columns"])
        out["near_threshold"]["ours_vs_evidently_differ"] = [c for c in near if c in out["ours_vs_evidently"]["decisions_differ"]]
        out["speedup_vs_evidently"] = {**speedups(out), "ours_compute_only": e["compute_seconds"] / o["compute_seconds"]}
        out["memory_share_of_evidently"] = {"ours": o["peak_rss_bytes"] / e["peak_rss_bytes"],
                                            "ours_chunked": out["ours_chunked"]["peak_rss_bytes"] / e["peak_rss_bytes"]}
    for p in (ref_path, cur_path): p.unlink()
    return out


def false_drift(n_ref: int, n_cur: int, seeds: int, work: Path, with_evidently: bool) -> dict:
    "Share of unshifted columns flagged as drifted, per method and column kind, over `seeds` independent pairs."
    folder = work / f"fpr_{n_ref}_{n_cur}"; folder.mkdir()
    for i in range(seeds):
        drift_pair(n_ref, seed=10_000 + i, shifted=False)[0].to_parquet(folder / f"ref_{i}.parquet")
        drift_pair(n_cur, seed=20_000 + i, shifted=False)[0].to_parquet(folder / f"cur_{i}.parquet")
    runs = {"ours": run_worker([python(), HERE / "drift_worker.py", "fpr", folder, seeds])["runs"]}
    if with_evidently: runs["evidently"] = run_worker([EVIDENTLY_PYTHON, HERE / "evidently_worker.py", "fpr", folder, seeds])["runs"]
    out = {"reference_rows": n_ref, "current_rows": n_cur, "seeds": seeds}
    for name, rs in runs.items():
        kinds = {"numeric": NUMERIC, "categorical": CATEGORICAL}
        out[name] = {"tests": sorted({r[c]["test"] for r in rs for c in r}),
                     **{f"rate_{k}": sum(r[c]["drifted"] for r in rs for c in cols) / (len(rs) * len(cols)) for k, cols in kinds.items()},
                     "rate_per_column": {c: sum(r[c]["drifted"] for r in rs) / len(rs) for c in NUMERIC + CATEGORICAL},
                     "dataset_drift_share": sum(sum(r[c]["drifted"] for c in r) / len(r) >= 0.5 for r in rs) / len(rs)}
    shutil.rmtree(folder)
    return out


def main(argv=None) -> Path:
    p = parser(__doc__)
    p.add_argument("--sizes", default="10000,100000,1000000", help="rows per side, comma-separated")
    p.add_argument("--seeds", type=int, default=50, help="pairs in the false-drift study")
    p.add_argument("--no-evidently", action="store_true", help="run ours only")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (medians kept); Evidently once at 1M")
    a = p.parse_args(argv)
    sizes = [2000] if a.smoke else [int(s) for s in a.sizes.split(",")]
    seeds = 3 if a.smoke else a.seeds
    skipped = "--no-evidently" if a.no_evidently else evidently_available()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        results = [one_size(n, Path(tmp), skipped is None, 1 if a.smoke else a.repeats) for n in sizes]
        fpr = [false_drift(nr, nc, seeds, Path(tmp), skipped is None) for nr, nc in ((1000, 1000), (500, 2000))[:1 if a.smoke else 2]]
    path = write_result("drift", {"smoke": a.smoke, "near_threshold_columns": NEAR, "evidently_skipped": skipped, "targets": TARGETS,
                                  "sizes": results, "false_drift": fpr}, a.out)
    for r in results:
        o, c, e = r["ours"], r["ours_chunked"], r["evidently"]
        print(f"{r['rows_per_side']:>9,} rows: ours {o['total_seconds']:.2f}s {o['peak_rss_bytes'] / MIB:.0f}MiB | chunked "
              f"{c['total_seconds']:.2f}s {c['peak_rss_bytes'] / MIB:.0f}MiB | exact {r['exact_scipy']['total_seconds']:.2f}s | "
              + (f"evidently {e['total_seconds']:.2f}s {e['peak_rss_bytes'] / MIB:.0f}MiB; differ {r['ours_vs_evidently']['decisions_differ']}"
                 if e else f"evidently skipped: {skipped}"), file=sys.stderr)
    return path


if __name__ == "__main__":
    print(main())
