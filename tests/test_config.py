"""Config errors are refused before anything runs, with the key path, exit code 2 and no traceback."""
import pytest

from mlops_nb.core import ConfigError, load_config
from conftest import ARRESTS_ROLES, run_cli, write_config


@pytest.mark.parametrize("override, path", [
    ("split.test_size=1.5", "split.test_size"),
    ("model.primary_metric=auc", "model.primary_metric"),
    ("model.candidates=[xgboost]", "model.candidates.0"),
    ("data.unknown_key=1", "data.unknown_key: unknown key"),
    ("data.sample_rows=-3", "data.sample_rows"),
    ("data.source=credit.csv", "data.target: required when data.source is a file"),
    ("model.threshold=2", "model.threshold.value"),
    ("model.candidates=[{name: x, estimator: sklearn}]", "model.candidates.0"),
    ("monitoring.drift_share=0", "monitoring.drift_share"),
])
def test_bad_override_names_key_path(override, path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.").replace("[", r"\[")):
        load_config(overrides=[override])


def test_file_errors_name_key_path(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  target: 3\n  extra: 1\nsplit: {test_size: zero}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    msg = str(err.value)
    assert "data.target" in msg and "data.extra: unknown key" in msg and "split.test_size" in msg
    assert "\n" not in msg  # one line


def test_overrides_are_applied_and_typed():
    cfg = load_config(overrides=["data.sample_rows=500", "split.strategy=time", "gates.min_primary_metric=null"])
    assert cfg.data.sample_rows == 500 and cfg.split.strategy == "time" and cfg.gates.min_primary_metric is None


def test_relative_paths_resolve_against_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write_config(tmp_path / "sub", data={"source": "data.csv", **ARRESTS_ROLES})
    from mlops_nb.core import resolve_path, tracking_uri
    cfg = load_config(path)
    assert resolve_path(cfg, cfg.data.source) == (tmp_path / "sub" / "data.csv").resolve()
    assert tracking_uri(cfg) == f"sqlite:///{(tmp_path / 'sub' / 'mlruns.db').resolve()}"


@pytest.mark.parametrize("args, needle", [
    (["run", "--set", "split.test_size=2"], "split.test_size"),
    (["run", "--set", "data.targte=x"], "data.targte: unknown key"),
    (["run", "--set", "nonsense"], "expected KEY=VALUE"),
    (["run", "--config", "missing.yaml"], "config file not found"),
    (["run", "--stages", "eda,training"], "unknown stage"),
])
def test_cli_config_errors_exit_2_one_line(tmp_path, args, needle):
    proc = run_cli(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "reports").exists()  # refused before anything ran


def test_built_in_values_apply_only_to_the_built_in_dataset(tmp_path):
    "A file source gets none of the built-in dataset's target, labels, sensitive features, time column or name."
    own = load_config(write_config(tmp_path, data={"source": "credit.csv", "target": "class", "positive_label": 2}))
    assert (own.name, own.data.target, own.data.positive_label) == ("credit", "class", 2)
    assert own.data.sensitive_features == [] and own.data.time_column is None and own.data.task is None
    builtin = load_config()
    assert (builtin.data.target, builtin.data.positive_label, builtin.data.time_column) == ("released", "Yes", "year")
    assert builtin.data.sensitive_features == ["colour", "sex"] and builtin.data.task == "binary"
