"""Team tracking: the whole pipeline, the registry and monitoring against a real `mlflow server` whose backend store is
PostgreSQL and whose artifacts the server proxies; and registry races (promotions, a registration during a promotion)
against SQLite and PostgreSQL.

The fixtures start Debian's PostgreSQL in a temporary data directory as an unprivileged user (initdb + pg_ctl on a free
port of 127.0.0.1, its unix socket in the temporary folder) and `mlflow server` on 127.0.0.1, once per session, and stop
both at the end. Without PostgreSQL (no `initdb`) these tests are skipped, saying so; `make test` installs it."""
import json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

import pandas as pd
import pytest

import yaml
from mlflow.tracking import MlflowClient

from conftest import free_port, read_json, run_cli
from mlops_nb.pipeline import STAGES

BIN = Path(sys.executable).parent
PG_USER = "postgres"  # the unprivileged account that owns the database files when the tests run as root
SERVER_START_SECONDS = 180


def _pg_bindir() -> Path | None:
    "The folder of PostgreSQL's server programs: `initdb` on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."
    found = shutil.which("initdb")
    if found: return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None




def _as_db_user(cmd: list) -> list:
    "PostgreSQL refuses to run as root: run its programs as PG_USER then (runuser), else as ourselves."
    return ["runuser", "-u", PG_USER, "--", *map(str, cmd)] if os.geteuid() == 0 else list(map(str, cmd))


def _check(cmd: list, what: str, timeout: float = 120):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode: raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@pytest.fixture(scope="session")
def postgres():
    "A throwaway PostgreSQL cluster on 127.0.0.1:<free port>; yields {'uri', 'port', 'socket_dir', 'bindir'}."
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                    "`make test` installs Debian's postgresql package")
    root = Path(tempfile.mkdtemp(prefix="mlops_nb-pg-"))  # short path: the unix socket lives here
    if os.geteuid() == 0: shutil.chown(root, PG_USER, PG_USER)
    data, port = root / "data", free_port()
    _check(_as_db_user([bindir / "initdb", "-D", data, "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync"]), "initdb")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    _check(_as_db_user([bindir / "pg_ctl", "-D", data, "-o", options, "-l", root / "postgres.log", "-w", "-t", "60", "start"]), "pg_ctl start")
    try:
        _check(_as_db_user([bindir / "createdb", "-h", root, "-p", port, "-U", "mlflow", "mlflow"]), "createdb")
        yield {"uri": f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow", "port": port, "socket_dir": root, "bindir": bindir}
    finally:
        subprocess.run(_as_db_user([bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]), capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200: return
        except OSError: pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {url}/health within {SERVER_START_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    "`mlflow server` on 127.0.0.1:<free port>, backend store PostgreSQL, artifacts proxied (--serve-artifacts) to a folder."
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts, port, log = folder / "artifacts", free_port(), folder / "server.log"
    cmd = [BIN / "mlflow", "server", "--backend-store-uri", postgres["uri"], "--artifacts-destination", artifacts,
           "--serve-artifacts", "--host", "127.0.0.1", "--port", port, "--workers", "2"]
    with open(log, "w") as out:
        proc = subprocess.Popen(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, proc, log)
        yield {"uri": url, "artifacts": artifacts, "log": log, "postgres": postgres}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the server's own process group (its workers): we started it
            try: proc.wait(timeout=30)
            except subprocess.TimeoutExpired: os.killpg(proc.pid, 9); proc.wait(timeout=30)


def _sql(postgres: dict, query: str) -> str:
    "One query through psql on the cluster's unix socket; the bare result."
    bindir = postgres["bindir"]
    return _check(_as_db_user([bindir / "psql", "-h", postgres["socket_dir"], "-p", postgres["port"], "-U", "mlflow", "-d", "mlflow",
                               "-At", "-c", query]), "psql").stdout.strip()


# Small and quick: 1,500 rows, 3 folds, fairness gates lenient so the version gets the challenger alias.
TEAM_CONFIG = {"name": "team_arrests", "environment": "team", "data": {"sample_rows": 1500}, "model": {"cv_folds": 3},
               "gates": {"min_primary_metric": 0.5, "min_lift_over_baseline": None, "min_lift_over_champion": -1.0,
                         "max_demographic_parity_difference": 1.0, "max_equalized_odds_difference": 1.0}}


def team_config(folder: Path, uri: str, **changes) -> Path:
    "A config YAML in `folder` pointing at the tracking server `uri` (a team's setting)."
    cfg = json.loads(json.dumps(TEAM_CONFIG))
    cfg["tracking"] = {"uri": uri}
    for key, value in changes.items(): cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def team_run(mlflow_server, tmp_path_factory):
    "One `mlops-nb run` of the whole pipeline against the PostgreSQL-backed server."
    folder = tmp_path_factory.mktemp("team")
    config = team_config(folder, mlflow_server["uri"])
    t0 = time.perf_counter()
    proc = run_cli("run", "--config", config, cwd=folder)
    seconds = time.perf_counter() - t0
    runs = [p for p in (folder / "reports").iterdir() if p.is_dir() and p.name != "monitoring"]
    assert proc.returncode == 0 and len(runs) == 1, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    print(f"\nteam pipeline run against mlflow server + PostgreSQL: {seconds:.1f} s")
    return {"proc": proc, "folder": folder, "config": config, "run_dir": runs[0], "summary": read_json(runs[0] / "summary.json"),
            "client": MlflowClient(tracking_uri=mlflow_server["uri"], registry_uri=mlflow_server["uri"]), "server": mlflow_server}


def test_pipeline_summary_against_the_team_server(team_run):
    s = team_run["summary"]
    assert s["status"] == "succeeded" and list(s["stages"]) == list(STAGES)
    assert all(v["status"] == "succeeded" for v in s["stages"].values())
    assert read_json(team_run["run_dir"] / "eda.json")["metrics"]["rows"] == 1500
    assert s["model"]["name"] == "team_arrests" and "challenger" in s["model"]["aliases"]
    assert all(g["passed"] for g in s["gates"]) and s["metrics"]["test_roc_auc"] > 0.5


def test_registered_version_with_challenger_and_lineage(team_run):
    from mlops_nb.core import load_config, mlflow_client
    from mlops_nb.evaluation import load_model_version
    s, client = team_run["summary"], team_run["client"]
    mv = client.get_model_version_by_alias("team_arrests", "challenger")
    assert int(mv.version) == s["model"]["version"]
    tags = mv.tags
    assert tags["mlops_nb.gates_passed"] == "true" and tags["mlops_nb.run_id"] == s["run_id"]
    assert tags["mlops_nb.config_hash"] == s["config_hash"] and tags["mlops_nb.data_fingerprint"] == s["data_fingerprint"]
    assert any(k.startswith("mlops_nb.sha256.") for k in tags)
    # the model's files come back through the server's artifact proxy and match their recorded sha256
    cfg = load_config(team_run["config"])
    loaded = load_model_version(mlflow_client(cfg.tracking.uri), "team_arrests", "challenger")
    assert loaded.version == s["model"]["version"] and loaded.reference_stats()["rows"] > 0
    assert client.get_model_version_download_uri("team_arrests", mv.version).startswith("mlflow-artifacts:/")


def test_parent_and_nested_runs_with_lineage_and_proxied_artifacts(team_run):
    s, client, server = team_run["summary"], team_run["client"], team_run["server"]
    parent = client.get_run(s["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["mlops_nb.status"] == "succeeded"
    assert parent.data.tags["mlops_nb.config_hash"] == s["config_hash"] and parent.data.tags["mlops_nb.environment"] == "team"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "team_arrests" and experiment.artifact_location.startswith("mlflow-artifacts:/")  # proxied
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.json", "index.html", "config.yaml"}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags["mlops_nb.stage"] for r in children} == set(STAGES)
    for run in children:
        stage = run.data.tags["mlops_nb.stage"]
        assert run.info.status == "FINISHED" and run.data.tags["mlops_nb.run_id"] == s["run_id"]
        assert run.data.tags["mlops_nb.data_fingerprint"] == s["data_fingerprint"]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {f"{stage}.ipynb", f"{stage}.html", f"{stage}.json"}
    eda = next(r for r in children if r.data.tags["mlops_nb.stage"] == "eda")
    assert eda.data.metrics["rows"] == 1500
    # downloaded through the server: the same bytes as the run folder's copy, stored under --artifacts-destination
    local = Path(client.download_artifacts(eda.info.run_id, "eda.json", str(team_run["folder"] / "download")))
    assert local.read_bytes() == (team_run["run_dir"] / "eda.json").read_bytes()
    stored = list(Path(server["artifacts"]).rglob("eda.json"))
    assert len(stored) == 1 and stored[0].read_bytes() == local.read_bytes()


def test_runs_and_versions_live_in_postgresql(team_run):
    postgres, s = team_run["server"]["postgres"], team_run["summary"]
    assert _sql(postgres, f"select status from runs where run_uuid = '{s['mlflow_run_id']}'") == "FINISHED"
    assert int(_sql(postgres, "select count(*) from model_versions where name = 'team_arrests'")) >= 1
    assert _sql(postgres, f"select version from registered_model_aliases where name = 'team_arrests' and alias = 'challenger'") \
        == str(s["model"]["version"])


def test_monitor_against_the_team_server(team_run):
    "`mlops-nb monitor` with the team config: the challenger is loaded through the server, the decision logged there."
    from sklego.datasets import load_arrests
    folder = team_run["folder"]
    batch = folder / "batch.csv"
    load_arrests(as_frame=True).sample(400, random_state=3).to_csv(batch, index=False)
    proc = run_cli("monitor", "--config", team_run["config"], batch, "--labels", cwd=folder, timeout=300)
    assert proc.returncode in (0, 5, 6), proc.stderr
    decisions = list((folder / "reports" / "monitoring").glob("*/decision.json"))
    assert len(decisions) == 1
    d = read_json(decisions[0])
    assert d["model"]["version"] == team_run["summary"]["model"]["version"] and d["rows"] == 400
    run = team_run["client"].get_run(d["mlflow_run_id"])
    assert run.data.tags["mlops_nb.kind"] == "monitoring" and run.data.tags["mlops_nb.decision"] == d["decision"]
    assert {a.path for a in team_run["client"].list_artifacts(run.info.run_id)} >= {"decision.json", "monitoring.html"}


# --- Registry races: promotions against each other, and a pipeline registering while promotions run -------------------
# Each racer is a separate process (as two people or a person and CI would be); they wait for each other at a file
# barrier, so their registry calls overlap. Run against SQLite (a file store: promotions lock a file) and PostgreSQL
# (through the team server: no lock, re-checks and retries).

PROMOTER = r'''
import json, sys, time
from pathlib import Path
from mlops_nb.core import MlopsError, load_config
from mlops_nb.registry import promote_version
config, version, barrier, racers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
cfg = load_config(config)
(barrier / f"ready-{version}").touch()
deadline = time.monotonic() + 120
while len(list(barrier.glob("ready-*"))) < racers and time.monotonic() < deadline: time.sleep(0.001)
try: print(json.dumps({"version": version, "ok": promote_version(cfg, version, approver=f"approver of {version}", reason="registry race test")}))
except MlopsError as e: print(json.dumps({"version": version, "refused": f"{type(e).__name__}: {e}"}))
'''


# The races on SQLite are `make test-slow`: the team server (PostgreSQL) is where concurrent promotions meet in practice.
@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.slow), "postgresql"])
def backend(request, tmp_path):
    "A tracking URI: a SQLite file, or the PostgreSQL-backed team server (skipped without PostgreSQL)."
    if request.param == "sqlite": return f"sqlite:///{tmp_path / 'mlruns.db'}"
    return request.getfixturevalue("mlflow_server")["uri"]


def _registry_with_versions(folder: Path, uri: str, name: str, versions: int = 3):
    "A registered model with `versions` versions whose gates passed (registry.quick_version), version 1 the champion."
    from mlops_nb.core import load_config, run_context
    from mlops_nb.registry import promote_version, quick_version
    from mlops_nb.eda import load_data, load_splits
    config = team_config(folder, uri, name=name)
    ctx = run_context(config, folder / "setup")
    _, schema = load_data(ctx)
    train, test = load_splits(ctx)
    made = [quick_version(ctx, train, test, schema, "logistic_regression", min_lift=-1.0)["version"] for _ in range(versions)]
    cfg = load_config(config)
    promote_version(cfg, made[0], approver="setup", reason="first champion")
    return config, cfg, made


def _race(config: Path, versions: list, folder: Path) -> list[dict]:
    "Promote each version in its own process, all at once; each outcome as {'version', 'ok': record} or {'refused': message}."
    barrier = Path(tempfile.mkdtemp(dir=folder, prefix="barrier-"))
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, str(config), str(v), str(barrier), str(len(versions))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in versions]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip(), f"promoter crashed (exit {p.returncode}): {err[-2000:]}"
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    return outcomes


def _registry_state(cfg) -> dict:
    from mlops_nb.core import mlflow_client, tracking_uri
    from mlops_nb.registry import promotion_history
    client = mlflow_client(tracking_uri(cfg))
    aliases = {a: str(v) for a, v in client.get_registered_model(cfg.model_name).aliases.items()}
    champion = aliases.get("champion")
    tags = client.get_model_version(cfg.model_name, champion).tags if champion else {}
    return {"aliases": aliases, "champion": champion, "champion_tags": tags, "history": promotion_history(client, cfg)}


def _assert_consistent(state: dict, before: str, outcomes: list[dict]):
    "One champion, every success recorded, the alias chain (champion <- previous) matching the recorded decisions."
    ok = [o for o in outcomes if "ok" in o]
    refused = [o for o in outcomes if "refused" in o]
    assert ok, f"every promotion was refused: {outcomes}"
    for o in refused: assert "PromotionRefused" in o["refused"] and "try again" in o["refused"] or "champion" in o["refused"], o
    history = state["history"]
    recorded = history[history.action == "promote"].tail(len(ok))
    assert sorted(recorded.version) == sorted(str(o["version"]) for o in ok), (history, outcomes)  # every success is recorded
    champion = state["champion"]
    assert champion in {str(o["version"]) for o in ok}, f"champion {champion} is none of the successful promotions {outcomes}"
    mine = next(o["ok"] for o in ok if str(o["version"]) == champion)
    # the champion's own record says what it replaced; `previous` must be that version (what a rollback returns to)
    assert state["aliases"].get("previous") == (mine["replaced"] or None), (state["aliases"], mine, outcomes)
    assert state["champion_tags"]["mlops_nb.approval.replaced"] == (mine["replaced"] or "none")
    if len(ok) == 2:  # both decisions stand: the later one must have replaced the earlier one, not the champion both saw
        other = next(str(o["version"]) for o in ok if str(o["version"]) != champion)
        assert mine["replaced"] == other, f"both promotions say they replaced version {before}; champion {champion}, previous {state['aliases'].get('previous')}: {outcomes}"


def test_racing_promotions_leave_one_consistent_champion(backend, tmp_path):
    name = f"race_{'pg' if backend.startswith('http') else 'sqlite'}_{os.getpid()}_{int(time.time())}"
    config, cfg, (v1, v2, v3) = _registry_with_versions(tmp_path, backend, name)
    champion = str(v1)
    for round_ in range(3):  # rotate: the two versions that are not the champion race each round
        contenders = [v for v in (v1, v2, v3) if str(v) != champion]
        outcomes = _race(config, contenders, tmp_path)
        state = _registry_state(cfg)
        _assert_consistent(state, champion, outcomes)
        champion = state["champion"]


def test_pipeline_registers_while_promotions_run(backend, tmp_path):
    "`mlops-nb run --stages evaluation` registers a new version while versions 2 and 3 are promoted back and forth."
    name = f"busy_{'pg' if backend.startswith('http') else 'sqlite'}_{os.getpid()}_{int(time.time())}"
    config, cfg, (v1, v2, v3) = _registry_with_versions(tmp_path, backend, name)
    from mlops_nb.registry import promote_version
    folder = tmp_path / "pipeline"; folder.mkdir()
    run_config = team_config(folder, backend, name=name, model={"candidates": ["logistic_regression"]})
    pipeline = subprocess.Popen([str(BIN / "mlops-nb"), "run", "--config", str(run_config), "--stages", "evaluation"], cwd=folder,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "MLOPS_NB_ENV": "test"})
    promoted, t0 = [], time.monotonic()
    while pipeline.poll() is None and time.monotonic() - t0 < 600:
        version = v2 if len(promoted) % 2 == 0 else v3
        promoted.append(promote_version(cfg, version, approver="on call", reason=f"promotion {len(promoted) + 1} during a pipeline run"))
    out, err = pipeline.communicate(timeout=600)
    assert pipeline.returncode == 0, f"{out[-2000:]}\n{err[-2000:]}"
    assert len(promoted) >= 2, "the pipeline finished before two promotions ran: no overlap was tested"
    summary = read_json(next(p for p in (folder / "reports").iterdir() if p.is_dir() and p.name != "monitoring") / "summary.json")
    new = summary["model"]["version"]
    assert new == v3 + 1 and "challenger" in summary["model"]["aliases"]
    state = _registry_state(cfg)
    last = promoted[-1]
    assert state["aliases"]["challenger"] == str(new)
    assert state["champion"] == str(last["version"]) and state["aliases"]["previous"] == last["replaced"]
    history = state["history"]
    assert list(history.version[-len(promoted):]) == [str(p["version"]) for p in promoted]  # every decision, in order
    assert list(history.replaced[-len(promoted) + 1:]) == [str(p["version"]) for p in promoted[:-1]]
