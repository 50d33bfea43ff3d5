"""Hostile and odd data for the tests of issue 10, and one shared pipeline run on it.

Not a test module: tests/test_hostile_data.py, test_reports_browser.py and test_service_fuzz.py import it, so the
expensive run (eda, rai, baseline, evaluation on the kitchen-sink data, then `mlops-nb monitor`) happens once per
pytest process.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import once_per_session, read_json, run_cli, write_config

# What a script in the data would do if it ran: the browser test asserts neither happened.
XSS = "<script>document.title='pwned';window.__pwned=1</script>"
XSS_VALUES = ['<img src=x onerror="window.__pwned=2;document.title=\'pwned\'">', "Noir 日本 ☃",
              "$5-$10 & <b>bold</b>", "a|b*c_`x`"]
EXTERNAL_URL = "http://198.51.100.7/leak.png"  # TEST-NET-2: never routable; a request to it is the failure we look for
PATH_LIKE = "http://example.org/a//b/../c"
TARGET = "décision / résultat"  # the kitchen sink has none of the built-in dataset's column names
KITCHEN_MODEL = "kitchen"  # its registered model's name (the config's name)


def slow(test):
    "Mark a test slow: `make test-slow` (MLOPS_NB_SLOW=1 pytest -m slow) runs it; the default suite deselects it (conftest)."
    return pytest.mark.slow(test)


def signal_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    "A small arrests-like frame whose target depends on `age` and `checks` (so models learn something)."
    rng = np.random.default_rng(seed)
    age = rng.integers(15, 65, n)
    checks = rng.integers(0, 7, n)
    p = 1 / (1 + np.exp(-(2.2 - 0.45 * checks + 0.02 * (age - 40))))
    return pd.DataFrame({"released": np.where(rng.random(n) < p, "Yes", "No"), "colour": rng.choice(["White", "Black"], n),
                         "sex": rng.choice(["Male", "Female"], n), "age": age, "year": rng.choice([1999, 2000, 2001, 2002], n),
                         "checks": checks})


def kitchen_sink(n: int = 400, seed: int = 0) -> pd.DataFrame:
    "Every odd trait that still makes valid data: hostile and unicode names and values, NaN, constants, booleans with"
    " missing values, ISO dates as text, a column mixing words and numbers, a `$` in labels."
    rng = np.random.default_rng(seed)
    renamed = {"released": TARGET, "colour": "couleur", "sex": "genre", "year": "période", "age": "âge (années)",
               "checks": " spaced  name "}
    df = signal_frame(n, seed).rename(columns=renamed)
    df[TARGET] = df[TARGET].map({"Yes": "libéré ✓", "No": "détenu"})
    df["âge (années)"] = df["âge (années)"].astype(float).where(rng.random(n) > 0.1)  # 10 % missing
    df[XSS] = rng.choice(XSS_VALUES, n)
    df["客户 类型"] = rng.choice(["零售", "批发 ✓"], n)
    df["link"] = rng.choice([f'<img src="{EXTERNAL_URL}">', "plain"], n)
    df[PATH_LIKE] = rng.integers(0, 3, n)  # a name MLflow would read as a path (metric names are derived from column names)
    df["constant"] = 7
    df["flag"] = pd.Series(rng.choice([True, False], n), dtype=object).where(rng.random(n) > 0.1)
    df["when"] = pd.date_range("2020-01-01", periods=n, freq="D").strftime("%Y-%m-%d")
    df["grade"] = rng.choice(["A", "B", "1", "2"], n)
    return df


def kitchen_sink_config(folder: Path, data: Path, **extra) -> Path:
    "The config of the kitchen-sink run: the hostile column is a sensitive feature, the assessment text is hostile too."
    return write_config(folder, name=KITCHEN_MODEL,
                        data={"source": str(data), "target": TARGET, "positive_label": "libéré ✓",
                              "sensitive_features": [XSS, "genre"], "time_column": "période"},
                        model={"candidates": ["logistic_regression"], "cv_folds": 3},
                        rai={"intended_use": XSS, "potential_harms": [XSS_VALUES[0], "$x$ <i>y</i>"], "min_group_size": 20},
                        **extra)


def _kitchen_sink_run(folder: Path) -> dict:
    data = folder / "kitchen.csv"
    kitchen_sink().to_csv(data, index=False)
    config = kitchen_sink_config(folder, data)
    run = run_cli("run", "--config", config, cwd=folder, timeout=600)
    runs = [p for p in (folder / "reports").iterdir() if p.is_dir() and p.name != "monitoring"]
    assert len(runs) == 1, run.stderr
    summary = read_json(runs[0] / "summary.json")
    batch = folder / "batch.csv"
    kitchen_sink(300, seed=1).to_csv(batch, index=False)
    version = (summary.get("model") or {}).get("version")
    monitor = run_cli("monitor", batch, "--config", config, "--labels", "--model", f"{KITCHEN_MODEL}/{version}", "--batch-id",
                      "hostile-batch", "--exit-zero", cwd=folder, timeout=300)
    return {"folder": folder, "config": config, "data": data, "proc": run, "run_dir": runs[0],
            "summary": summary, "monitor": monitor, "reports": folder / "reports"}


def kitchen_sink_run(tmp_path_factory) -> dict:
    "Run every stage on the kitchen-sink CSV (none of the built-in columns), then `mlops-nb monitor` a batch (once per session)."
    return once_per_session(tmp_path_factory, "kitchen", _kitchen_sink_run)
