"""Hostile input to the scoring service (`mlops-nb serve`), on 127.0.0.1 only, bounded in count and time.

- property-based fuzzing of POST /invocations (hypothesis): structured payloads in the four formats with the model's
  columns, unknown ones, and any JSON value in any place; raw bodies; odd methods, paths, content types and request
  ids. Never a 5xx, never a stack trace, error bodies small (the request is not echoed);
- a load test: 16 concurrent clients, a mix of valid and invalid requests: no error, every scored row and every
  refusal in the inference log, the server's memory (RSS) flat;
- models come only from the configured registry: no request, parameter, header or command-line value can make the
  service load a model from a path or URL (a booby-trapped pickle proves nothing was loaded);
- a truncated or bit-flipped model file is refused at start and at reload, with a message naming the model URI.

The fuzzed model is the kitchen-sink model (hostile and unicode column names, tests/hostile.py). `make test-slow` runs
more examples and a 30 s load test.
"""
import json, os, pickle, random, signal, socket, subprocess, threading, time, uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import CLI, free_port, read_json, run_cli, write_config
from hostile import KITCHEN_MODEL, XSS, kitchen_sink_run, slow

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
TRACE_MARKS = ("Traceback (most recent call last)", '.py", line ', "site-packages")




class Service:
    "`mlops-nb serve` in a process of its own on 127.0.0.1 and a free port; stopped like Ctrl-C (the inference log drained)."

    def __init__(self, folder: Path, config: Path, *args: str, timeout: float = 120):
        self.port, self.log_dir, self.out = free_port(), folder / "inference-log", open(folder / f"serve-{uuid.uuid4().hex[:6]}.log", "w")
        self.proc = subprocess.Popen([str(CLI), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
                                      "--poll-seconds", "0", "--inference-log", str(self.log_dir), *args],
                                     cwd=folder, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        self.url, deadline = f"http://127.0.0.1:{self.port}", time.monotonic() + timeout
        while True:
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200: break
            except requests.ConnectionError: pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(); raise RuntimeError(f"mlops-nb serve did not start: {Path(self.out.name).read_text()[-2000:]}")
            time.sleep(0.3)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try: self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(timeout=10)
        self.out.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    k = kitchen_sink_run(tmp_path_factory)
    assert k["summary"]["model"]["version"] == 1, k["proc"].stderr
    return k


@pytest.fixture(scope="module")
def rows(kitchen):
    "Valid rows for the model, as JSON values: a new batch read the way training data is read, only the model's columns."
    from mlops_nb.core import load_config
    from mlops_nb.eda import load_dataset
    features = read_json(kitchen["run_dir"] / "baseline.json")["features"]
    columns = features["numeric"] + features["categorical"] + features["boolean"]
    cfg = load_config(kitchen["config"], [f"data.source={kitchen['folder'] / 'batch.csv'}"])
    return json.loads(load_dataset(cfg)[columns].to_json(orient="records", force_ascii=False))


@pytest.fixture(scope="module")
def service(kitchen, tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("serve"), kitchen["config"], "--model", f"{KITCHEN_MODEL}/1", "--allow-unapproved")
    yield s
    s.stop()


def _check(r: requests.Response, rows: int | None = None) -> None:
    "What every answer must be: below 500, JSON, no trace, small when it is an error, one decision per row when scored."
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert not any(m in r.text for m in TRACE_MARKS), r.text[:1000]
    body = r.json()
    if r.status_code == 200:
        assert set(body["predictions"]) <= {0, 1} and (rows is None or len(body["predictions"]) == rows), body
        assert body["model_version"] == "1"
    else:
        assert set(body) == {"error_code", "message"} and len(r.content) < 2500, r.text[:300]


def _body(fmt: str, records: list[dict]):
    columns = list(dict.fromkeys(c for r in records for c in r))
    if fmt == "dataframe_split": return {"columns": columns, "data": [[r.get(c) for c in columns] for r in records]}
    if fmt == "inputs": return {c: [r.get(c) for r in records] for c in columns}
    return records


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=40), st.sampled_from([XSS, "", " ", "NaN", "Infinity", "1e309", "\u0000", "😀" * 20]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                           max_leaves=12)
def _fuzz(examples: int):
    "Hypothesis settings: a fixed set of examples in the default suite (the same every run), fresh random ones in the long runs."
    return settings(max_examples=examples, deadline=None, database=None, derandomize=examples <= 300,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def payloads(draw, rows: list[dict]):
    "A scoring request: valid rows in any format, then (most of the time) one hostile change to a value, a column or the structure."
    records = [dict(r) for r in draw(st.lists(st.sampled_from(rows), min_size=1, max_size=6))]
    names, fmt = list(rows[0]), draw(st.sampled_from(FORMATS))
    change = draw(st.sampled_from(["none", "value", "none", "value", "values", "drop", "extra", "empty", "field", "params", "anything"]))
    if change in ("value", "values"):
        for r in records if change == "values" else records[:1]: r[draw(st.sampled_from(names))] = draw(JSON_VALUES)
    if change == "drop":
        gone = draw(st.sampled_from(names))
        for r in records[: draw(st.integers(1, len(records)))]: r.pop(gone)
    if change == "extra":
        extra = draw(st.text(max_size=20))
        for r in records: r[extra] = draw(JSON_VALUES)
    payload = {fmt: _body(fmt, [] if change == "empty" else records)}
    if change == "field": payload[draw(st.sampled_from(FORMATS + ("params", "model_uri", "")))] = draw(JSON_VALUES)
    if change == "params": payload["params"] = draw(st.one_of(JSON_VALUES, st.fixed_dictionaries({"probabilities": JSON_VALUES})))
    return draw(JSON_VALUES) if change == "anything" else payload


def _fuzz_structured(service, rows, examples: int) -> None:
    seen = {}

    @_fuzz(examples)
    @given(payload=payloads(rows), probabilities=st.sampled_from([None, "true", "false", "maybe", "1"]))
    def one(payload, probabilities):
        r = requests.post(service.url + "/invocations", json=payload, timeout=30,
                          params={"probabilities": probabilities} if probabilities else None)
        _check(r)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1

    one()
    assert seen.get(200, 0) >= examples // 20 and sum(v for k, v in seen.items() if 400 <= k < 500) >= examples // 20, seen  # both paths ran


def test_fuzz_structured_requests(service, rows):
    _fuzz_structured(service, rows, 300)


@slow
def test_fuzz_structured_requests_long(service, rows):
    _fuzz_structured(service, rows, 3000)


def _fuzz_raw(service, examples: int) -> None:
    statuses = []

    @_fuzz(examples)
    @given(body=st.one_of(st.binary(max_size=3000), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                          st.text(max_size=500).map(str.encode)),
           content_type=st.sampled_from(["application/json", "application/json; charset=latin-1", "text/csv", "", "application/JSON",
                                         "application/json; charset=utf-8", "multipart/form-data; boundary=x"]),
           method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
           path=st.one_of(st.just("/invocations"), st.sampled_from(["/reload", "/ping", "/health", "/version", "/metrics", "/",
                                                                    "/invocations/../reload", "/docs", "/openapi.json"]),
                          st.text(max_size=30).map(lambda t: "/" + requests.utils.quote(t))),
           request_id=st.one_of(st.none(), st.text(min_size=1, max_size=80).filter(lambda t: t.isprintable() and t.isascii() and t == t.strip())))
    def one(body, content_type, method, path, request_id):
        headers = {"Content-Type": content_type} if content_type else {}
        if request_id: headers["X-Request-Id"] = request_id
        r = requests.request(method, service.url + path, data=body, headers=headers, timeout=30)
        assert r.status_code < 500, (r.status_code, r.text[:300])
        assert not any(m in r.text for m in TRACE_MARKS), r.text[:1000]
        if path != "/metrics": r.json()  # every answer is JSON
        if r.status_code >= 400: assert len(r.content) < 2500
        echoed = r.headers.get("X-Request-Id")
        assert echoed is None or echoed == request_id or len(echoed) == 32  # a bad id is replaced, never reflected
        statuses.append(r.status_code)

    one()
    assert {400, 404, 405, 415} <= set(statuses), sorted(set(statuses))


def test_fuzz_raw_bodies_methods_paths_and_headers(service):
    _fuzz_raw(service, 300)


@slow
def test_fuzz_raw_bodies_methods_paths_and_headers_long(service):
    _fuzz_raw(service, 3000)


def test_a_large_bad_body_is_not_echoed(service, rows):
    "MLflow's server echoes a bad body back: a 3 MB body with a bad value gets a short answer naming the column."
    bad = [dict(r) for r in rows] + [{**rows[0], "âge (années)": "x" * 3_000_000}]
    r = requests.post(service.url + "/invocations", json={"dataframe_records": bad}, timeout=60)
    assert r.status_code == 400 and len(r.content) < 2500 and "âge (années)" in r.json()["message"], (r.status_code, r.text[:300])
    _check(r)


def _load(service: Service, rows: list[dict], seconds: float, clients: int = 16) -> dict:
    "`clients` threads posting for `seconds`: 1 in 8 requests lacks a column. Returns counts, ids and RSS samples."
    stop, lock, samples, gone = time.monotonic() + seconds, threading.Lock(), [], next(iter(rows[0]))
    out = {"ok_rows": 0, "ok_ids": set(), "refused_ids": set(), "errors": []}

    def client(seed):
        rng, session = random.Random(seed), requests.Session()
        while time.monotonic() < stop:
            n, rid, bad = rng.randint(1, 8), uuid.uuid4().hex, rng.random() < 1 / 8
            batch = [dict(r) for r in rng.sample(rows, n)]
            if bad:  # a model input missing (the model's first column: a constant column is no longer an input)
                for r in batch: r.pop(gone)
            fmt = rng.choice(FORMATS)
            try:
                r = session.post(service.url + "/invocations", json={fmt: _body(fmt, batch)}, headers={"X-Request-Id": rid}, timeout=60)
                expected = 400 if bad else 200
                if r.status_code != expected or r.headers.get("X-Request-Id") != rid: raise AssertionError(f"{r.status_code}: {r.text[:200]}")
                if not bad and len(r.json()["predictions"]) != n: raise AssertionError(f"{n} rows, {r.text[:200]}")
            except Exception as e:
                with lock: out["errors"].append(repr(e)[:300])
                continue
            with lock:
                if bad: out["refused_ids"].add(rid)
                else: out["ok_rows"] += n; out["ok_ids"].add(rid)

    def sampler():
        while time.monotonic() < stop:
            samples.append(service.rss_mb()); time.sleep(0.25)

    with ThreadPoolExecutor(clients + 1) as pool:
        for f in [pool.submit(sampler)] + [pool.submit(client, i) for i in range(clients)]: f.result()
    out["rss"] = samples
    return out


def _check_load(service: Service, result: dict, seconds: float) -> None:
    from mlops_nb.monitoring import read_inference_log
    assert not result["errors"], result["errors"][:5]
    assert len(result["ok_ids"]) > 5 * seconds, len(result["ok_ids"])
    assert service.stop() == 0  # Ctrl-C: a clean exit after draining the log
    log = read_inference_log(service.log_dir)
    scored, refused = log[log["status"] == 200], log[log["status"] != 200]
    assert len(scored) == result["ok_rows"] and set(scored["request_id"]) == result["ok_ids"]  # no scored row lost
    assert set(refused["request_id"]) == result["refused_ids"] and (refused["status"] == 400).all()  # and no refusal
    rss = result["rss"]
    warm, late = rss[len(rss) // 4: len(rss) // 2], rss[-len(rss) // 4:]
    growth = sum(late) / len(late) - sum(warm) / len(warm)
    print(f"load: {len(result['ok_ids'])} scored and {len(result['refused_ids'])} refused requests in {seconds} s, {len(log)} log records, "
          f"RSS {min(rss):.0f}-{max(rss):.0f} MB, growth {growth:+.1f} MB")
    assert growth < 40, f"RSS grew {growth:.1f} MB under constant load: {rss[::max(1, len(rss) // 20)]}"


def test_load_16_clients(kitchen, rows, tmp_path):
    "16 concurrent clients: no error, no lost inference-log record, memory flat (a short run; `make test-slow` runs 30 s)."
    service = Service(tmp_path, kitchen["config"], "--model", f"{KITCHEN_MODEL}/1", "--allow-unapproved")
    try:
        seconds = 8
        _check_load(service, _load(service, rows, seconds), seconds)
    finally:
        service.stop()


@slow
def test_load_16_clients_30_seconds(kitchen, rows, tmp_path):
    service = Service(tmp_path, kitchen["config"], "--model", f"{KITCHEN_MODEL}/1", "--allow-unapproved")
    try: _check_load(service, _load(service, rows, 30), 30)
    finally: service.stop()


class _Trap:
    "Unpickling this creates a file: proof that a model was loaded from where it should never be."
    def __init__(self, sentinel: Path): self.sentinel = sentinel
    def __reduce__(self): return (open, (str(self.sentinel), "w"))


@pytest.fixture
def trap(tmp_path) -> tuple[Path, Path]:
    "A booby-trapped MLflow model folder (a pickle that creates a sentinel file when loaded) and the sentinel's path."
    model, sentinel = tmp_path / "evil-model", tmp_path / "LOADED"
    model.mkdir()
    (model / "model.pkl").write_bytes(pickle.dumps(_Trap(sentinel)))
    (model / "MLmodel").write_text("flavors:\n  python_function: {loader_module: mlflow.sklearn, model_path: model.pkl, env: {}}\n"
                                   "  sklearn: {pickled_model: model.pkl, serialization_format: cloudpickle}\n")
    return model, sentinel


def test_no_request_can_choose_the_model(service, rows, trap):
    model, sentinel = trap
    row = rows[0]
    for where in (str(model), model.as_uri(), f"runs:/{uuid.uuid4().hex}/model", "models:/other@champion", "http://127.0.0.1:9/m"):
        for payload in ({"dataframe_records": [row], "model_uri": where}, {"dataframe_records": [row], "params": {"model_uri": where}},
                        {"dataframe_records": [row], "params": {"probabilities": True, "model": where}}):
            r = requests.post(service.url + "/invocations", json=payload, timeout=30)
            assert r.status_code == 400 and "model" in r.json()["message"], r.text
        r = requests.post(service.url + "/invocations", json={"dataframe_records": [row]}, timeout=30,
                          params={"model_uri": where, "model": where}, headers={"X-Model-Uri": where, "X-Model": where})
        assert r.status_code == 200 and r.json()["model_version"] == "1", r.text  # query and headers are ignored
        r = requests.post(service.url + "/reload", json={"model_uri": where}, timeout=30)
        assert r.status_code == 400 and "takes no body" in r.json()["message"], r.text
        r = requests.post(service.url + "/reload", params={"model_uri": where, "model": where}, timeout=60)  # reloads the configured model
        assert r.status_code == 200 and str(r.json()["champion"]["model_version"]) == "1", r.text
        for method, path in (("GET", f"/invocations?model={where}"), ("POST", f"/models/{where}"), ("PUT", "/reload")):
            r = requests.request(method, service.url + path, timeout=30)
            assert r.status_code in (404, 405) and set(r.json()) == {"error_code", "message"}, r.text
    health = requests.get(service.url + "/health", timeout=10).json()
    assert f"models:/{KITCHEN_MODEL}/1" in json.dumps(health) and not sentinel.exists()


@pytest.mark.parametrize("spec", ["{model}", "{uri}", "{model}/1", "runs:/abc/model", "models:/arrests/1", "http://127.0.0.1:9/m@champion",
                                  "o'brien@champion", "arrests@../../{model}"])
def test_the_service_refuses_a_model_outside_the_registry(kitchen, trap, spec):
    "What `mlops-nb serve --model SPEC` builds before it listens: a path or URL is never loaded, the error names it."
    from mlops_nb.core import MlopsError, load_config
    from mlops_nb.serving import ScoringService, service_settings
    model, sentinel = trap
    spec = spec.format(model=model, uri=model.as_uri())
    with pytest.raises(MlopsError) as refused:
        ScoringService(service_settings(load_config(kitchen["config"]), model=spec, poll_seconds=0, inference_log=None))
    assert spec.rpartition("@" if "@" in spec else "/")[0] in str(refused.value) and not sentinel.exists()


def test_serve_command_refuses_a_path_in_one_line(kitchen, trap, tmp_path):
    model, sentinel = trap
    proc = run_cli("serve", "--config", kitchen["config"], "--model", f"{model}/1", "--port", str(free_port()), "--no-inference-log",
                   cwd=tmp_path, timeout=90)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode in (1, 2) and len(errors) == 1 and str(model) in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not sentinel.exists()


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory):
    "A registry of its own (its files are damaged on purpose): one logistic regression version, champion."
    from mlops_nb.core import run_context
    from mlops_nb.registry import promote_version, quick_version
    from mlops_nb.eda import load_schema, load_splits
    folder = tmp_path_factory.mktemp("tamper")
    config = write_config(folder, data={"sample_rows": 600})
    ctx = run_context(config, folder / "run")
    train, test = load_splits(ctx)
    version = quick_version(ctx, train, test, load_schema(ctx), "logistic_regression", 0.0)["version"]
    promote_version(ctx.config, version, "fuzz", "a champion to damage")
    return {"folder": folder, "config": config, "cfg": ctx.config, "test": test, "skops": sorted((folder / "mlartifacts").rglob("model.skops"))}


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated": path.write_bytes(bytes(data[: len(data) // 2]))
    else: data[len(data) // 2] ^= 0x01; path.write_bytes(bytes(data))  # one bit flipped, same size


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_model_file_is_refused_at_start(small_registry, how, tmp_path):
    from mlops_nb.serving import ScoringService, service_settings
    from mlops_nb.evaluation import ModelIntegrityError
    assert small_registry["skops"], "no model.skops found in the registry's artifacts"
    saved = {p: p.read_bytes() for p in small_registry["skops"]}
    try:
        for p in saved: _damage(p, how)
        with pytest.raises(ModelIntegrityError) as refused:
            ScoringService(service_settings(small_registry["cfg"], poll_seconds=0, inference_log=None))
        if how == "truncated":  # the command line: one line, exit 1, nothing listening
            proc = run_cli("serve", "--config", small_registry["config"], "--port", str(free_port()), "--no-inference-log", cwd=tmp_path, timeout=90)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
            assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert errors[0] == f"error: {refused.value}"
    finally:
        for p, data in saved.items(): p.write_bytes(data)
    message = str(refused.value)
    assert "models:/arrests/1" in message and "model.skops changed" in message and "do not match their recorded sha256" in message


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_model_file_is_refused_at_reload(small_registry, how, tmp_path):
    from mlops_nb.serving import BackgroundServer, ScoringService, create_app, service_settings
    row = json.loads(small_registry["test"].drop(columns="released").head(2).to_json(orient="records"))
    saved = {p: p.read_bytes() for p in small_registry["skops"]}
    service = ScoringService(service_settings(small_registry["cfg"], poll_seconds=0, inference_log=None))
    with BackgroundServer(create_app(service)) as server:
        try:
            for p in saved: _damage(p, how)
            r = requests.post(server.url + "/reload", timeout=60)
            assert r.status_code == 409 and r.json()["error_code"] == "RELOAD_REFUSED", r.text
            assert "models:/arrests/1" in r.json()["message"] and "model.skops changed" in r.json()["message"]
        finally:
            for p, data in saved.items(): p.write_bytes(data)
        r = requests.post(server.url + "/invocations", json={"dataframe_records": row}, timeout=30)  # the verified model keeps serving
        assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        assert requests.post(server.url + "/reload", timeout=60).status_code == 200  # restored files load again
