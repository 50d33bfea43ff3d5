"""Shared fixtures: the real `mlops-nb` console script, small configs and one end-to-end run."""
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"
CLI = Path(sys.executable).parent / "mlops-nb"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy variants, run by `make test-slow` (MLOPS_NB_SLOW=1)")


def free_port() -> int:
    "A free TCP port on 127.0.0.1 (tests talk to loopback only)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args, cwd: Path, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    "Run the installed `mlops-nb` command; return the finished process (text output)."
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(CLI), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


# The built-in dataset's roles, for tests that write arrests-shaped files: a file source gets none of them by default.
ARRESTS_ROLES = {"target": "released", "positive_label": "Yes", "sensitive_features": ["colour", "sex"], "time_column": "year"}


def write_config(folder: Path, **sections) -> Path:
    "Write a config YAML in `folder` with a private SQLite store; `sections` are merged over that."
    cfg = {"environment": "test", "tracking": {"uri": "sqlite:///mlruns.db"}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory):
    "One `mlops-nb run` on the built-in data, shared by the end-to-end tests."
    folder = tmp_path_factory.mktemp("e2e")
    config = write_config(folder)
    proc = run_cli("run", "--config", config, cwd=folder)
    runs = [p for p in (folder / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1, proc.stderr
    return {"proc": proc, "folder": folder, "run_dir": runs[0], "config": config,
            "summary": read_json(runs[0] / "summary.json")}
