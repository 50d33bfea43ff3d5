"""Bad data gets a clear error naming the column (exit 4) or the file (exit 2), never a traceback."""
import pandas as pd
import pytest

from conftest import run_cli, write_config

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
          "infinite value": GOOD.assign(age=[float("inf")] + list(range(59)))}[name]
    df.to_csv(csv, index=False)
    expect = {"no target": "released", "single class": "exactly 2 classes", "unknown positive label": "positive label",
              "missing sensitive": "sex", "three classes": "exactly 2 classes", "infinite value": "age: infinite values in 1 row (rows 0)"}[name]
    return csv, {}, 4, expect


CASES = ["missing file", "empty file", "header only", "no target", "single class", "unknown positive label",
         "missing sensitive", "three classes", "infinite value"]


@pytest.mark.parametrize("name", CASES)
def test_validate_command(tmp_path, name):
    data, _, code, expect = _case(tmp_path, name)
    proc = run_cli("validate", data, cwd=tmp_path, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["missing file", "empty file", "no target", "single class", "unknown positive label"])
def test_run_refuses_bad_data(tmp_path, name):
    data, _, code, expect = _case(tmp_path, name)
    config = write_config(tmp_path, data={"source": str(data)})
    proc = run_cli("run", "--config", config, cwd=tmp_path, timeout=300)
    assert proc.returncode == code, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr


def test_validate_good_file_passes(tmp_path):
    GOOD.to_csv(tmp_path / "good.csv", index=False)
    proc = run_cli("validate", tmp_path / "good.csv", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "passes every check" in proc.stdout
