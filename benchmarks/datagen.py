"""Seeded synthetic data for the benchmarks: drift pairs (reference, current) and a classification dataset.

Drift pairs: 20 columns, 15 numeric (normal, skewed, uniform, exponential, integer counts, bimodal) and 5 categorical
(3 to 12 categories, some rare). The current side shifts some columns clearly (normed Wasserstein or Jensen-Shannon
well above 0.1), some slightly (well below 0.1) and leaves the rest alone, so a correct method decides every column the
same way as the exact computation. No missing values (Evidently and we treat them differently; see the README).
Four more columns (NEAR) have a true score within 0.01 of the 0.1 threshold, two below and two above, so that a small
score error or sampling noise can change a decision: the comparison of decisions can fail.

False-drift frames (`unshifted_frame`): the 15 numeric columns and 4 categorical ones of 10 to 20 categories (uniform,
and uneven with rare ones), never shifted: every column flagged as drifted is a false alarm.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

NUMERIC = [f"n{i:02d}" for i in range(15)]
CATEGORICAL = [f"c{i}" for i in range(5)]
CATEGORIES = {"c0": (["red", "green", "blue"], [0.5, 0.3, 0.2]),
              "c1": (["a", "b", "c", "d", "e"], [0.3, 0.25, 0.2, 0.15, 0.1]),
              "c2": ([f"k{j:02d}" for j in range(12)], [0.3, 0.2, 0.1, 0.1, 0.08, 0.07, 0.05, 0.04, 0.03, 0.015, 0.01, 0.005]),
              "c3": (["north", "south", "east", "west"], [0.4, 0.3, 0.2, 0.1]),
              "c4": ([f"s{j}" for j in range(8)], [0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.04])}
# current-side category probabilities where the column is shifted
SHIFTED_CATEGORIES = {"c1": [0.15, 0.2, 0.2, 0.2, 0.25],            # strong shift (JS about 0.15)
                      "c3": [0.38, 0.31, 0.2, 0.11],                 # slight shift (JS about 0.02)
                      "c4": [0.05, 0.1, 0.1, 0.12, 0.13, 0.15, 0.15, 0.2]}  # strong shift


# near the threshold: numeric columns shifted by 0.095 and 0.105 standard deviations (normed Wasserstein = the shift);
# categorical ones whose current probabilities are mixed toward a reversed order until Jensen-Shannon is 0.095 / 0.105
NEAR_NUMERIC = {"t0": 0.095, "t1": 0.105}
NEAR_CATEGORICAL = {"t2": 0.095, "t3": 0.105}
NEAR = [*NEAR_NUMERIC, *NEAR_CATEGORICAL]
NEAR_P = np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05])
WIDE_CATEGORIES = {"w10": np.full(10, 0.1), "w12": 1 / np.arange(1, 13), "w15": 1 / np.arange(1, 16) ** 1.2,
                   "w20": 1 / np.arange(1, 21) ** 1.5}  # uniform, then ever more uneven (rarest of w20: 0.4%)
WIDE_CATEGORIES = {c: p / p.sum() for c, p in WIDE_CATEGORIES.items()}
WIDE_CATEGORICAL = list(WIDE_CATEGORIES)


def near_probabilities(target: float) -> np.ndarray:
    "Current-side probabilities of a NEAR categorical column: Jensen-Shannon distance `target` from NEAR_P."
    from scipy.optimize import brentq
    from scipy.spatial.distance import jensenshannon
    mix = lambda t: (1 - t) * NEAR_P + t * NEAR_P[::-1]
    return mix(brentq(lambda t: jensenshannon(NEAR_P, mix(t)) - target, 0.0, 1.0))


def _numeric(name: str, n: int, rng: np.random.Generator, shifted: bool) -> np.ndarray:
    "One numeric column; `shifted` applies that column's planned change (or none)."
    i = int(name[1:])
    if i < 5: x = rng.normal(10 * i, 1 + i, n)
    elif i < 8: x = rng.lognormal(0, 0.5, n) * (i - 4)
    elif i < 10: x = rng.uniform(-5, 5, n)
    elif i < 12: x = rng.exponential(2.0, n)
    elif i < 14: x = rng.poisson(30, n).astype(float)
    else: x = np.where(rng.random(n) < 0.4, rng.normal(-3, 1, n), rng.normal(3, 1, n))
    if not shifted: return x
    sd = {0: 1, 1: 2, 3: 4, 5: 0.6, 8: 2.9, 10: 2.0, 12: 5.5, 14: 3.1}
    plan = {0: ("shift", 0.5), 1: ("shift", 0.03), 3: ("scale", 1.6), 5: ("shift", 0.3),
            8: ("shift", 0.02), 10: ("scale", 1.03), 12: ("shift", 1.0), 14: ("shift", 0.25)}  # in reference standard deviations
    if i not in plan: return x
    kind, size = plan[i]
    mean = x.mean()
    return x + size * sd[i] if kind == "shift" else mean + (x - mean) * size


def drift_frame(n: int, seed: int, shifted: bool) -> pd.DataFrame:
    "One side of a drift pair: `n` rows of the 20 columns (the current side when `shifted`)."
    rng = np.random.default_rng(seed)
    cols = {c: _numeric(c, n, rng, shifted) for c in NUMERIC}
    for c in CATEGORICAL:
        values, p = CATEGORIES[c]
        cols[c] = rng.choice(values, n, p=SHIFTED_CATEGORIES[c] if shifted and c in SHIFTED_CATEGORIES else p)
    for c, size in NEAR_NUMERIC.items():
        cols[c] = rng.normal(0, 1, n) + (size if shifted else 0.0)
    for c, target in NEAR_CATEGORICAL.items():
        cols[c] = rng.choice([f"v{j}" for j in range(len(NEAR_P))], n, p=near_probabilities(target) if shifted else NEAR_P)
    return pd.DataFrame(cols)


def unshifted_frame(n: int, seed: int) -> pd.DataFrame:
    "`n` rows of the false-drift study: the 15 numeric columns and the WIDE categorical ones, from the reference distribution."
    rng = np.random.default_rng(seed)
    cols = {c: _numeric(c, n, rng, False) for c in NUMERIC}
    for c, p in WIDE_CATEGORIES.items():
        cols[c] = rng.choice([f"{c}_{j:02d}" for j in range(len(p))], n, p=p)
    return pd.DataFrame(cols)


def drift_pair(n: int, seed: int = 0, shifted: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    "Reference and current frames of `n` rows each (independent seeds); the current one shifted as planned."
    return drift_frame(n, seed, False), drift_frame(n, seed + 1_000_003, shifted)


def drift_schema(df: pd.DataFrame) -> dict:
    "The schema that `mlops_nb.eda.reference_statistics` needs (kinds of the 20 columns; no target)."
    return {"features": list(df.columns), "target": "__no_target__",
            "columns": {c: {"kind": "numeric" if c in NUMERIC or c in NEAR_NUMERIC else "categorical"} for c in df.columns}}


def classification_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` rows × 20 features and a binary target, shaped like the built-in data (its 7 columns, names and values, plus
    13 numeric ones): some hidden checks in 01_eda and 05_monitoring name the built-in columns (see the README)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"colour": rng.choice(["White", "Black"], n, p=[0.7, 0.3]), "year": rng.integers(1997, 2003, n),
                       "age": rng.integers(12, 67, n), "sex": rng.choice(["Male", "Female"], n, p=[0.9, 0.1]),
                       "employed": rng.choice(["Yes", "No"], n, p=[0.8, 0.2]), "citizen": rng.choice(["Yes", "No"], n, p=[0.85, 0.15]),
                       "checks": rng.poisson(1.6, n).clip(0, 6)})
    for i in range(13): df[f"x{i:02d}"] = rng.normal(0, 1, n)
    logit = (1.2 + 0.8 * df.x00 - 0.6 * df.x01 + 0.4 * df.x02 * df.x03 - 0.35 * df.checks + 0.5 * (df.employed == "Yes")
             - 0.3 * (df.colour == "Black") + 0.01 * (df.age - 25))
    df["released"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    return df
