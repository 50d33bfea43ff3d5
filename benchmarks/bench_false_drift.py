"""False drift on unshifted data: batches of 100, 300, 1,000 and 10,000 rows against one 100,000-row reference, ours
(the test chosen by reference and batch size) and Evidently 0.7's DataDriftPreset (chosen by reference size only).

Every batch comes from the reference's own distribution (benchmarks/datagen.py `unshifted_frame`: 15 numeric columns and
4 categorical ones of 10 to 20 categories), so every column flagged as drifted is a false alarm. Seeded. Rates, not
times: machine load does not change them. Where ours scores a distance, the exact distance on the full data (scipy) is
computed for the first batches too. Writes results/false_drift.json.
"""
from __future__ import annotations

import sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EVIDENTLY_PYTHON, HERE, parser, python, run_worker, write_result  # noqa: E402
from datagen import NUMERIC, WIDE_CATEGORICAL, unshifted_frame  # noqa: E402

TARGETS = {"false_drift_rate": 0.07, "max_distance_error": 0.005}


def rates(runs: list[dict]) -> dict:
    "Per-column and per-kind share of batches flagged, the dataset-drift share (half the columns or more), the tests."
    columns = list(runs[0])
    per_column = {c: sum(r[c]["drifted"] for r in runs) / len(runs) for c in columns}
    kinds = {"numeric": [c for c in columns if c in NUMERIC], "categorical": [c for c in columns if c not in NUMERIC]}
    return {"batches": len(runs), "tests": sorted({r[c]["test"] for r in runs for c in r}),
            "rate_all": sum(per_column.values()) / len(columns),
            **{f"rate_{k}": sum(per_column[c] for c in cols) / len(cols) for k, cols in kinds.items()},
            "max_rate_column": max(per_column.values()), "rate_per_column": per_column,
            "dataset_drift_share": sum(sum(r[c]["drifted"] for c in r) / len(r) >= 0.5 for r in runs) / len(runs)}


def one_size(rows: int, ref_path: Path, work: Path, n_batches: int, evidently_batches: int | None,
             exact_batches: int) -> dict:
    "Ours on `n_batches` unshifted batches of `rows` rows (Evidently on the first `evidently_batches` of them)."
    import pandas as pd
    frames = [unshifted_frame(rows, seed=1_000 * rows + i).assign(__batch=i) for i in range(n_batches)]
    batches = pd.concat(frames, ignore_index=True)
    path = work / f"batches_{rows}.parquet"
    batches.to_parquet(path)
    ours = run_worker([python(), HERE / "drift_worker.py", "batches", ref_path, path, exact_batches])
    errors = [abs(o[c]["score"] - e[c]) for o, e in zip(ours["runs"], ours["exact"]) for c in e]
    out = {"rows": rows, "ours": {**rates(ours["runs"]), "distance_columns_compared": len(errors),
                                  "max_distance_error": max(errors, default=None)}}
    if evidently_batches:
        first = work / f"batches_{rows}_evidently.parquet"
        batches[batches["__batch"] < evidently_batches].to_parquet(first)
        worker = [EVIDENTLY_PYTHON, HERE / "evidently_worker.py", "batches", ref_path, first]
        out["evidently"] = rates(run_worker(worker, timeout=6 * 3600)["runs"])
    path.unlink()
    return out


def main(argv=None) -> Path:
    p = parser(__doc__)
    p.add_argument("--sizes", default="100,300,1000,10000", help="batch rows, comma-separated")
    p.add_argument("--reference-rows", type=int, default=100_000)
    p.add_argument("--batches", type=int, default=200, help="unshifted batches per size (ours)")
    p.add_argument("--evidently-batches", type=int, default=10,
                   help="of those, how many Evidently judges (each of its runs rereads the whole reference)")
    p.add_argument("--exact-batches", type=int, default=20, help="batches whose distances are also computed exactly")
    p.add_argument("--no-evidently", action="store_true", help="run ours only")
    a = p.parse_args(argv)
    sizes = [100, 1000] if a.smoke else [int(s) for s in a.sizes.split(",")]
    ref_rows, n, ev, ex = ((5_000, 10, 2, 2) if a.smoke
                           else (a.reference_rows, a.batches, a.evidently_batches, a.exact_batches))
    absent = None if EVIDENTLY_PYTHON.exists() else f"{EVIDENTLY_PYTHON} is absent (`make install-evidently` creates it; `make test` and `make bench` do)"
    skipped = "--no-evidently" if a.no_evidently else absent
    with tempfile.TemporaryDirectory(prefix="bench-false-drift-") as tmp:
        ref_path = Path(tmp) / "reference.parquet"
        unshifted_frame(ref_rows, seed=7).to_parquet(ref_path)
        results = [one_size(r, ref_path, Path(tmp), n, None if skipped else min(ev, n), min(ex, n)) for r in sizes]
    path = write_result("false_drift", {"smoke": a.smoke, "evidently_skipped": skipped, "targets": TARGETS,
                                        "reference_rows": ref_rows, "sizes": results,
                                        "columns": {"numeric": len(NUMERIC), "categorical": len(WIDE_CATEGORICAL)}},
                        a.out)
    for r in results:
        o, e = r["ours"], r.get("evidently")
        theirs = f" | evidently {e['rate_all']:.1%} (max column {e['max_rate_column']:.0%})" if e else ""
        print(f"{r['rows']:>6,} rows: ours {o['rate_all']:.1%} (max column {o['max_rate_column']:.0%}, "
              f"{', '.join(o['tests'])}){theirs}", file=sys.stderr)
    return path


if __name__ == "__main__":
    print(main())
