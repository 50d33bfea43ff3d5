"""Drift of a Parquet batch read in chunks, against stored reference statistics (proposed for 05_monitoring).

`mlops_nb.monitoring` reads a batch whole into pandas (`read_batch` -> `load_dataset`): a 1M-row batch with 5 text
columns becomes ~0.5 GB of Python string objects before any test runs. Here the batch never exists as a DataFrame:

- a numeric column is read alone (Parquet column projection), record batch by record batch, into one float64 array
  (8 bytes a row), tested, and dropped before the next column;
- the categorical columns are read together, batch by batch, and only their category counts are kept (pyarrow's
  `value_counts`, no Python strings per row).

The tests and their scores are those of `drift_report` (same functions for numeric columns; the categorical tests on
counts are the same formulas as `chisquare_drift` / `jensenshannon_drift` given the batch's counts): the benchmark
checks that both paths agree to 1e-9.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency

from mlops_nb.monitoring import DRIFT_TESTS, default_test


def numeric_column(pf: pq.ParquetFile, column: str, batch_rows: int) -> np.ndarray:
    "One numeric column of the file as float64 without missing values, read a record batch at a time."
    out, at = np.empty(pf.metadata.num_rows, dtype=float), 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[column]):
        x = batch.column(0).to_numpy(zero_copy_only=False).astype(float, copy=False)
        out[at:at + len(x)] = x
        at += len(x)
    out = out[:at]
    return out[~np.isnan(out)]


def category_counts(pf: pq.ParquetFile, columns: list[str], batch_rows: int) -> dict[str, Counter]:
    "Counts of each category (as text) of the given columns, accumulated over record batches."
    counts = {c: Counter() for c in columns}
    if not columns: return counts
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        for c in columns:
            arr = batch.column(c)
            if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type): arr = pc.cast(arr, pa.string())
            for item in pc.value_counts(arr).to_pylist():
                if item["values"] is not None: counts[c][item["values"]] += item["counts"]
    return counts


def _aligned(reference: dict, counts: Counter) -> tuple[np.ndarray, np.ndarray]:
    "Reference and batch counts over the union of categories (the order of `_aligned_counts`)."
    ref = reference.get("counts", {})
    keys = sorted(set(ref) | set(counts))
    return np.array([ref.get(k, 0) for k in keys], dtype=float), np.array([counts.get(k, 0) for k in keys], dtype=float)


def categorical_score(test: str, reference: dict, counts: Counter) -> float:
    "chisquare / jensenshannon / psi of a categorical column from the batch's counts."
    ref, cur = _aligned(reference, counts)
    if test == "chisquare": return 1.0 if len(ref) < 2 else float(chi2_contingency(np.vstack([ref, cur])).pvalue)
    p, q = ref / ref.sum(), cur / cur.sum()
    if test == "jensenshannon": return float(jensenshannon(p, q))
    p, q = np.where(p == 0, 0.0001, p), np.where(q == 0, 0.0001, q)
    return float(np.sum((q - p) * np.log(q / p)))


def _decide(test: str, score: float, threshold: float | None) -> dict:
    _, _, default, kind = DRIFT_TESTS[test]
    threshold = default if threshold is None else threshold
    return {"test": test, "score": score, "threshold": threshold,
            "drifted": bool(score < threshold if kind == "p_value" else score >= threshold)}


def chunked_drift_report(path, reference: dict, batch_rows: int = 131_072) -> pd.DataFrame:
    "Per-column drift of a Parquet batch against stored reference statistics, reading the file in chunks."
    pf = pq.ParquetFile(path)
    present = set(pf.schema_arrow.names)
    cols = {c: r for c, r in reference["columns"].items() if c in present}
    rows = {}
    for c, ref in cols.items():
        if ref["kind"] != "numeric": continue
        test = default_test("numeric", reference["rows"])
        x = numeric_column(pf, c, batch_rows)
        rows[c] = _decide(test, DRIFT_TESTS[test][0](ref, x), None)
        del x
    cats = [c for c, r in cols.items() if r["kind"] != "numeric"]
    for c, counts in category_counts(pf, cats, batch_rows).items():
        test = default_test("categorical", reference["rows"])
        rows[c] = _decide(test, categorical_score(test, cols[c], counts), None)
    order = [c for c in cols if c in rows]
    return pd.DataFrame.from_dict({c: rows[c] for c in order}, orient="index",
                                  columns=["test", "score", "threshold", "drifted"]).rename_axis("column")

