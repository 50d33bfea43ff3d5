"""Shared fixtures: the real `mlops-nb` console script, small configs and one end-to-end run."""
import json, os, socket, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"
CLI = Path(sys.executable).parent / "mlops-nb"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy variants, run by `make test-slow` (MLOPS_NB_SLOW=1)")
    config.stash[SKIPS] = []


# `make test` runs every test but the slow ones: those are deselected (not skipped), so a skip always means something
# is missing. MLOPS_NB_STRICT_SKIPS=1 (set by `make test`) fails the run on any skip but the one allowed below.
SKIPS = pytest.StashKey[list]()
ALLOWED_SKIPS = ("no Docker engine here",)  # CI's runners have Docker; this machine has none


def pytest_collection_modifyitems(config, items):
    "Deselect the slow tests unless MLOPS_NB_SLOW is set or a marker expression (`-m`) chooses the tests."
    if os.environ.get("MLOPS_NB_SLOW") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_runtest_logreport(report):
    "Remember each skip with its reason (the controller sees every worker's reports)."
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _CONFIG[0].stash[SKIPS].append((report.nodeid, reason))


_CONFIG: list = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    _CONFIG[:] = [session.config]


def pytest_sessionfinish(session, exitstatus):
    "With MLOPS_NB_STRICT_SKIPS=1, a skip whose reason is not allowed fails the run, naming the test and the reason."
    if not os.environ.get("MLOPS_NB_STRICT_SKIPS") or hasattr(session.config, "workerinput"):
        return
    unexpected = [(test, reason) for test, reason in session.config.stash[SKIPS]
                  if not any(allowed in reason for allowed in ALLOWED_SKIPS)]
    if unexpected:
        for test, reason in unexpected:
            print(f"\nunexpected skip: {test}: {reason}")
        print(f"{len(unexpected)} unexpected skip(s): `make test` runs every test (MLOPS_NB_STRICT_SKIPS=1)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


def registered_project(folder: Path, frame, target: str, estimator: str) -> SimpleNamespace:
    "Fit and register a version of `estimator` on `frame` in a store of its own (what the evaluation stage registers)."
    from mlops_nb.core import run_context
    from mlops_nb.eda import load_data, reference_statistics
    from mlops_nb.evaluation import log_model, register_version
    from mlops_nb.models import build_pipeline, model_columns, target_vector
    frame.to_csv(folder / "data.csv", index=False)
    config = write_config(folder, data={"source": "data.csv", "target": target})
    ctx = run_context(config, folder / "run")
    data, schema = load_data(ctx)
    X = data[model_columns(schema)]
    pipeline = build_pipeline(schema, estimator).fit(X, target_vector(data, ctx.config))
    reference = reference_statistics(data, schema, scores=pipeline.predict(X))
    model = register_version(ctx, log_model(ctx, pipeline, X, reference), gates=[])
    return SimpleNamespace(folder=folder, config=config, cfg=ctx.config, pipeline=pipeline, model=model, data=data)


def _to_json(value):
    "A fixture's result as JSON: paths and finished processes tagged, so `_from_json` gives them back."
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, subprocess.CompletedProcess):
        return {"__process__": {"args": [str(a) for a in value.args], "returncode": value.returncode,
                                "stdout": value.stdout, "stderr": value.stderr}}
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    return value


def _from_json(value):
    if isinstance(value, dict) and "__path__" in value:
        return Path(value["__path__"])
    if isinstance(value, dict) and "__process__" in value:
        return subprocess.CompletedProcess(**value["__process__"])
    if isinstance(value, dict):
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


def once_per_session(tmp_path_factory, name: str, build) -> dict:
    """`build(folder)` once for the whole test session, whichever xdist worker asks first; the other worker waits for it
    and reads the same result (paths, processes, summaries). For end-to-end runs the tests only read."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder, shared by its workers
    done = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            folder = root / name
            folder.mkdir()
            done.write_text(json.dumps(_to_json(build(folder))))
    return _from_json(json.loads(done.read_text()))


def _e2e_run(folder: Path) -> dict:
    config = write_config(folder)
    proc = run_cli("run", "--config", config, cwd=folder)
    runs = [p for p in (folder / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1, proc.stderr
    return {"proc": proc, "folder": folder, "run_dir": runs[0], "config": config,
            "summary": read_json(runs[0] / "summary.json")}


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory):
    "One `mlops-nb run` on the built-in data, shared by the end-to-end tests (of both workers)."
    return once_per_session(tmp_path_factory, "e2e", _e2e_run)
