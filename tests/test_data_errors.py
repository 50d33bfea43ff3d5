"""Bad data gets a clear error naming the column (exit 4) or the file (exit 2), never a traceback."""
import pandas as pd
import pytest

from conftest import ARRESTS_ROLES, run_cli, write_config

GOOD = pd.DataFrame({"released": ["Yes", "No"] * 30, "colour": ["White", "Black", "Black"] * 20,
                     "sex": ["Male", "Female", "Male", "Male"] * 15, "age": range(60), "year": [1999, 2000] * 30})


def _case(tmp_path, name):
    "Write one bad data file; return (data path, extra config, expected exit code, expected text)."
    csv = tmp_path / "data.csv"
    if name == "missing file": return tmp_path / "nope.csv", {}, 2, "file not found"
    if name == "empty file": csv.write_text(""); return csv, {}, 4, "empty"
    if name == "header only": csv.write_text("released,colour,sex,age,year\n"); return csv, {}, 4, "no rows"
    df = {"no target": GOOD.drop(columns="released"), "single class": GOOD.assign(released="Yes"),
          "unknown positive label": GOOD.assign(released=GOOD.released.map({"Yes": "Y", "No": "N"})),
          "missing sensitive": GOOD.drop(columns="sex"), "three classes": GOOD.assign(released=["Yes", "No", "Maybe"] * 20),
          "infinite value": GOOD.assign(age=[float("inf")] + list(range(59))),
          "half-empty column": GOOD.assign(income=[None, 1.5] * 30),
          "identifier column": GOOD.assign(person=[f"p{i:03d}" for i in range(60)])}[name]
    df.to_csv(csv, index=False)
    expect = {"no target": "released", "single class": "single class", "unknown positive label": "data.positive_label: 'Yes'",
              "missing sensitive": "data.sensitive_features names 'sex'", "three classes": "binary but the target has 3 classes",
              "infinite value": "warning: age: infinite values in 1 row (rows 0)",
              "half-empty column": "warning: income: 50% missing, above gates.max_missing_share=0.3",
              "identifier column": "warning: person: 60 distinct values in 60 rows: an identifier"}[name]
    return csv, {}, 0 if expect.startswith("warning") else 4, expect


CASES = ["missing file", "empty file", "header only", "no target", "single class", "unknown positive label",
         "missing sensitive", "three classes", "infinite value", "half-empty column", "identifier column"]


@pytest.mark.parametrize("name", CASES)
def test_validate_command(tmp_path, name):
    data, _, code, expect = _case(tmp_path, name)
    proc = run_cli("validate", data, cwd=tmp_path, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["missing file", "empty file", "no target", "single class", "unknown positive label"])
def test_run_refuses_bad_data(tmp_path, name):
    data, _, code, expect = _case(tmp_path, name)
    config = write_config(tmp_path, data={"source": str(data), **ARRESTS_ROLES})
    proc = run_cli("run", "--config", config, cwd=tmp_path, timeout=300)
    assert proc.returncode == code, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr


def test_validate_good_file_passes(tmp_path):
    GOOD.to_csv(tmp_path / "good.csv", index=False)
    proc = run_cli("validate", tmp_path / "good.csv", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "passes every check" in proc.stdout
