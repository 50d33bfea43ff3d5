"""One drift measurement in its own process (the project's venv); prints a RESULT JSON line with timings and peak RSS.

    drift_worker.py reference REF.parquet STATS.json      build and store the reference statistics (training time)
    drift_worker.py ours STATS.json BATCH.parquet         monitoring: stored statistics + the batch read whole (pandas)
    drift_worker.py chunked STATS.json BATCH.parquet      monitoring: stored statistics + the batch read in chunks (chunked_drift_report)
    drift_worker.py exact REF.parquet BATCH.parquet       plain scipy on both full samples (the exact scores)
    drift_worker.py fpr PAIRS_DIR N                       ours on N small unshifted pairs (false drift rate)
    drift_worker.py batches REF.parquet BATCHES.parquet K ours on each batch (column `__batch`) against one reference;
                                                          exact scipy distances of the distance-tested columns of the first K
"""
from __future__ import annotations

import json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, peak_rss  # noqa: E402


def _columns(table) -> dict:
    return {c: {"test": r["test"], "score": None if r["score"] is None else float(r["score"]), "drifted": bool(r["drifted"]),
                "threshold": float(r["threshold"])} for c, r in table.to_dict("index").items()}


def reference(ref_path: str, stats_path: str) -> dict:
    import pandas as pd
    from datagen import drift_schema
    from mlops_nb.eda import reference_statistics
    imported = peak_rss()
    t0 = time.perf_counter()
    ref = pd.read_parquet(ref_path)
    t1 = time.perf_counter()
    stats = reference_statistics(ref, drift_schema(ref))
    t2 = time.perf_counter()
    Path(stats_path).write_text(json.dumps(stats))
    return {"read_seconds": t1 - t0, "compute_seconds": t2 - t1, "write_seconds": time.perf_counter() - t2,
            "stats_bytes": Path(stats_path).stat().st_size, "rss_after_imports_bytes": imported}


def ours(stats_path: str, batch_path: str) -> dict:
    import pandas as pd
    from mlops_nb.monitoring import drift_report
    imported = peak_rss()
    t0 = time.perf_counter()
    stats = json.loads(Path(stats_path).read_text())
    batch = pd.read_parquet(batch_path)
    t1 = time.perf_counter()
    table = drift_report(batch, stats)
    t2 = time.perf_counter()
    return {"read_seconds": t1 - t0, "compute_seconds": t2 - t1, "total_seconds": t2 - t0, "columns": _columns(table),
            "rss_after_imports_bytes": imported}


def chunked(stats_path: str, batch_path: str) -> dict:
    from mlops_nb.monitoring import chunked_drift_report
    imported = peak_rss()
    t0 = time.perf_counter()
    stats = json.loads(Path(stats_path).read_text())
    table = chunked_drift_report(batch_path, stats)
    t1 = time.perf_counter()
    return {"read_seconds": None, "compute_seconds": None, "total_seconds": t1 - t0, "columns": _columns(table),
            "rss_after_imports_bytes": imported}


def exact(ref_path: str, batch_path: str) -> dict:
    "Evidently's default large-reference tests computed directly with scipy on the full samples."
    import numpy as np
    import pandas as pd
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance
    imported = peak_rss()
    t0 = time.perf_counter()
    ref, cur = pd.read_parquet(ref_path), pd.read_parquet(batch_path)
    t1 = time.perf_counter()
    cols = {}
    for c in ref.columns:
        if pd.api.types.is_numeric_dtype(ref[c]):
            a, b = ref[c].dropna().to_numpy(float), cur[c].dropna().to_numpy(float)
            score = float(wasserstein_distance(a, b) / max(float(np.std(a)), 0.001))
            cols[c] = {"test": "wasserstein", "score": score, "threshold": 0.1, "drifted": score >= 0.1}
        else:
            p, q = ref[c].value_counts(), cur[c].value_counts()
            keys = sorted(set(p.index) | set(q.index))
            p, q = p.reindex(keys, fill_value=0).to_numpy(float), q.reindex(keys, fill_value=0).to_numpy(float)
            score = float(jensenshannon(p / p.sum(), q / q.sum()))
            cols[c] = {"test": "jensenshannon", "score": score, "threshold": 0.1, "drifted": score >= 0.1}
    t2 = time.perf_counter()
    return {"read_seconds": t1 - t0, "compute_seconds": t2 - t1, "total_seconds": t2 - t0, "columns": cols,
            "rss_after_imports_bytes": imported}


def fpr(pairs_dir: str, n: str) -> dict:
    "Ours on small unshifted pairs: reference statistics of the reference side, then drift_report of the current side."
    import pandas as pd
    from datagen import drift_schema
    from mlops_nb.eda import reference_statistics
    from mlops_nb.monitoring import drift_report
    runs, t0 = [], time.perf_counter()
    for i in range(int(n)):
        ref, cur = (pd.read_parquet(Path(pairs_dir) / f"{side}_{i}.parquet") for side in ("ref", "cur"))
        runs.append(_columns(drift_report(cur, reference_statistics(ref, drift_schema(ref)))))
    return {"runs": runs, "total_seconds": time.perf_counter() - t0}


def _exact_distance(test: str, ref, cur) -> float:
    "The distance on the full data with scipy (as `exact` computes it)."
    import numpy as np
    import pandas as pd
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance
    if test == "wasserstein":
        a = ref.to_numpy(float)
        return float(wasserstein_distance(a, cur.to_numpy(float)) / max(float(np.std(a)), 0.001))
    p, q = ref.value_counts(), cur.value_counts()
    keys = sorted(set(p.index) | set(q.index))
    p, q = p.reindex(keys, fill_value=0).to_numpy(float), q.reindex(keys, fill_value=0).to_numpy(float)
    return float(jensenshannon(p / p.sum(), q / q.sum()))


def batches(ref_path: str, batches_path: str, exact_batches: str) -> dict:
    """Ours on many batches against one reference (its statistics built once): per batch and column the test, score and
    decision; for the first `exact_batches` batches also the exact distance of each distance-tested column."""
    import pandas as pd
    from datagen import drift_schema
    from mlops_nb.eda import reference_statistics
    from mlops_nb.monitoring import drift_report
    ref, all_batches = pd.read_parquet(ref_path), pd.read_parquet(batches_path)
    t0 = time.perf_counter()
    stats = reference_statistics(ref, drift_schema(ref))
    build, runs, exact = time.perf_counter() - t0, [], []
    t1 = time.perf_counter()
    for i, (_, b) in enumerate(all_batches.groupby("__batch", sort=True)):
        b = b.drop(columns="__batch")
        cols = _columns(drift_report(b, stats))
        runs.append(cols)
        if i < int(exact_batches):
            exact.append({c: _exact_distance(v["test"], ref[c], b[c]) for c, v in cols.items() if v["test"] in ("wasserstein", "jensenshannon")})
    return {"runs": runs, "exact": exact, "reference_build_seconds": build, "monitor_seconds": time.perf_counter() - t1}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    emit({"mode": mode, **{"reference": reference, "ours": ours, "chunked": chunked, "exact": exact, "fpr": fpr, "batches": batches}[mode](*args)})
