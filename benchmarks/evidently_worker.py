"""Evidently's DataDriftPreset on the same seeded Parquet data, in its own venv (benchmarks/.venv-evidently:
evidently==0.7.*, pandas<3). Imports nothing from mlops_nb. Prints a RESULT JSON line (timings, peak RSS, decisions).

    evidently_worker.py drift REF.parquet CUR.parquet     one pair: time and memory of Report([DataDriftPreset()]).run
    evidently_worker.py fpr PAIRS_DIR N                   N small pairs: per-column decisions (false drift rate)
    evidently_worker.py batches REF.parquet BATCHES.parquet   each batch (column `__batch`) against one reference
"""
from __future__ import annotations

import json, sys, time
from importlib import metadata


def _peak() -> int:
    "VmHWM of this process (not ru_maxrss, which Linux carries over exec from the parent)."
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _run(ref, cur) -> tuple[dict, dict]:
    "Run the preset; return per-column {test, score, threshold, drifted} and the preset's drifted count/share."
    from evidently import Report
    from evidently.presets import DataDriftPreset
    snap = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    cols, count = {}, None
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            method, value, threshold = cfg["method"], float(m["value"]), float(cfg["threshold"])
            p_value = "p_value" in method.lower()
            cols[cfg["column"]] = {"test": method, "score": value, "threshold": threshold,
                                   "drifted": bool(value < threshold if p_value else value >= threshold)}
        elif cfg["type"].endswith("DriftedColumnsCount"):
            count = m["value"]
    return cols, count


def drift(ref_path: str, cur_path: str) -> dict:
    import pandas as pd
    import evidently  # noqa: F401  (import time is not the report's time)
    imported = _peak()
    t0 = time.perf_counter()
    ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    t1 = time.perf_counter()
    cols, count = _run(ref, cur)
    t2 = time.perf_counter()
    return {"read_seconds": t1 - t0, "compute_seconds": t2 - t1, "total_seconds": t2 - t0, "columns": cols,
            "drifted_columns": count, "rss_after_imports_bytes": imported}


def fpr(pairs_dir: str, n: str) -> dict:
    import pandas as pd
    from pathlib import Path
    runs, t0 = [], time.perf_counter()
    for i in range(int(n)):
        ref, cur = (pd.read_parquet(Path(pairs_dir) / f"{side}_{i}.parquet") for side in ("ref", "cur"))
        runs.append(_run(ref, cur)[0])
    return {"runs": runs, "total_seconds": time.perf_counter() - t0}


def batches(ref_path: str, batches_path: str) -> dict:
    import pandas as pd
    ref, all_batches = pd.read_parquet(ref_path), pd.read_parquet(batches_path)
    runs, t0 = [], time.perf_counter()
    for _, b in all_batches.groupby("__batch", sort=True):
        runs.append(_run(ref, b.drop(columns="__batch"))[0])
    return {"runs": runs, "total_seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    out = {"drift": drift, "fpr": fpr, "batches": batches}[mode](*args)
    out.update(mode=mode, evidently_version=metadata.version("evidently"), pandas_version=metadata.version("pandas"),
               peak_rss_bytes=_peak())
    print("RESULT " + json.dumps(out), flush=True)
