# Two commands on a fresh machine: `make run` and `make test`. Both create .venv and install the
# pinned dependencies (requirements.lock) first; nothing relies on packages installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_ARGS ?=
# Two workers, one test file each (files share session fixtures: the e2e run, the PostgreSQL server).
# JupyterLab refuses to start as root without --allow-root (CI and these machines run as root).
LAB_ROOT := $(shell [ "$$(id -u)" -eq 0 ] && echo --allow-root)
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15 -rs

.PHONY: install install-spark install-server install-evidently system-packages run test test-slow check-clean check-export test-nbs test-py lab lock clean \
        server server-stop docs

$(STAMP): settings.ini setup.py requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Debian packages for the extras: Java for Spark, PostgreSQL for the team tracking server. Installed only when missing
# (`$(call apt_install,PACKAGE:PROGRAM ...)`), with one quiet `apt-get update`; as root, or through `sudo -n`. A developer
# without either gets a warning, and the tests that need the package are skipped, saying why.
define apt_install
missing=""; for spec in $(1); do pkg=$$(echo $$spec | cut -d: -f1); prog=$$(echo $$spec | cut -d: -f2); \
  command -v $$prog >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/$$prog >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
if [ -n "$$missing" ]; then \
  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo -n"; log=$$(mktemp); echo "installing Debian packages:$$missing"; \
  if ! { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; } >$$log 2>&1; then \
    if [ "$$(id -u)" -eq 0 ]; then cat $$log; echo "apt-get install$$missing failed"; rm -f $$log; exit 1; fi; \
    echo "warning: could not install$$missing (not root, no sudo): the tests that need them are skipped"; fi; rm -f $$log; fi
endef
SPARK_STAMP  := $(VENV)/.installed-spark
SERVER_STAMP := $(VENV)/.installed-server

## Java, PostgreSQL, Chromium and wrk at once (one apt-get update): what `make test` needs beyond Python (Chromium: the
## reports are opened in a real headless browser, tests/test_reports_browser.py; wrk: the serving benchmark's smoke,
## tests/test_bench_smoke.py).
system-packages:
	@$(call apt_install,default-jre-headless:java postgresql:initdb chromium:chromium wrk:wrk)

$(SPARK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev,spark]"
	$(BIN)/python -m pip check
	touch $@

$(SERVER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev,server]"
	$(BIN)/python -m pip check
	touch $@

## The Spark engine (`mlops-nb score --engine spark`): pyspark, and Java from Debian when missing.
install-spark: $(SPARK_STAMP)
	@$(call apt_install,default-jre-headless:java)

## The team tracking server: the PostgreSQL driver, and PostgreSQL from Debian when missing.
install-server: $(SERVER_STAMP)
	@$(call apt_install,postgresql:initdb)

## Run the whole pipeline on the built-in dataset (or RUN_ARGS="--config my.yaml").
run: install
	$(BIN)/mlops-nb run $(RUN_ARGS)

## Every check, in CI's order: notebooks clean, export in sync, notebook tests, pytest.
test: install system-packages install-spark install-server install-evidently check-clean check-export test-nbs test-py

check-clean: install
	$(BIN)/nbstripout --verify nbs/*.ipynb nbs/tutorials/*.ipynb

check-export: install
	$(BIN)/nbdev_export
	git diff --exit-code -- mlops_nb
	test -z "$$(git status --porcelain --untracked-files=all -- mlops_nb)" || { git status --short -- mlops_nb; echo "nbdev_export changed mlops_nb/: commit the export"; exit 1; }

test-nbs: install
	$(BIN)/nbdev_test --n_workers 2 --timing

# pytest exits 5 when it collects no test: that is not a failure of the suite. Slow tests are deselected (tests/conftest.py);
# any skip but a missing Docker engine fails the run (MLOPS_NB_STRICT_SKIPS=1), and -rs prints every skip's reason.
test-py: install
	MLOPS_NB_STRICT_SKIPS=1 $(BIN)/pytest $(PYTEST_ARGS) tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

## The heavy variants (1M rows, 1,000 columns, 30 s load, long fuzzing): not part of `make test`.
test-slow: install system-packages install-spark install-server
	MLOPS_NB_SLOW=1 $(BIN)/pytest -m slow --durations=15 tests

## The documentation site (mkdocs.yml, docs/) into site/: open site/index.html, offline. Every notebook of nbs/ is a page,
## executed with its defaults (two at a time; cached in .cache/docs, so a rebuild re-executes only the notebooks whose
## source, the package or requirements.lock changed); the API, command-line and configuration references are generated
## from the code. MLOPS_NB_DOCS_EXECUTE=0 builds without executing (pages without outputs, in seconds).
docs: install install-spark
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## JupyterLab on the notebooks (127.0.0.1 only).
lab: install
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs $(LAB_ROOT)

## Re-pin requirements.lock from a fresh resolve of settings.ini.
lock:
	rm -rf /tmp/mlops_nb-lock && $(PYTHON) -m venv /tmp/mlops_nb-lock
	/tmp/mlops_nb-lock/bin/pip install --quiet --upgrade pip
	/tmp/mlops_nb-lock/bin/pip install --quiet -e ".[dev,spark,server]"
	/tmp/mlops_nb-lock/bin/pip freeze --exclude-editable | grep -v '^mlops.nb' > requirements.lock

## A team tracking server on this machine: PostgreSQL (data in SERVER_DIR, port PG_PORT, 127.0.0.1 only) and
## `mlflow server` on 127.0.0.1:SERVER_PORT serving the artifacts itself. Point a config at it with
## `tracking: {uri: http://127.0.0.1:5000}`. Stop PostgreSQL with `make server-stop`.
SERVER_DIR  ?= /var/tmp/mlops_nb-server
SERVER_PORT ?= 5000
PG_PORT     ?= 5433
PG_BIN       = $$(dirname $$(readlink -f $$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)))
AS_PG        = $$([ "$$(id -u)" -eq 0 ] && echo runuser -u postgres --)
server: install-server
	@set -e; mkdir -p $(SERVER_DIR)/artifacts; [ "$$(id -u)" -ne 0 ] || chown postgres: $(SERVER_DIR); \
	test -f $(SERVER_DIR)/pgdata/PG_VERSION || $(AS_PG) $(PG_BIN)/initdb -D $(SERVER_DIR)/pgdata -U mlflow --auth=trust -E UTF8 >/dev/null; \
	$(AS_PG) $(PG_BIN)/pg_ctl -D $(SERVER_DIR)/pgdata status >/dev/null || $(AS_PG) $(PG_BIN)/pg_ctl -D $(SERVER_DIR)/pgdata \
	  -o "-p $(PG_PORT) -k $(SERVER_DIR) -c listen_addresses=127.0.0.1" -l $(SERVER_DIR)/postgres.log -w start >/dev/null; \
	$(AS_PG) $(PG_BIN)/psql -h $(SERVER_DIR) -p $(PG_PORT) -U mlflow -d postgres -Atc "select 1 from pg_database where datname = 'mlflow'" | grep -q 1 \
	  || $(AS_PG) $(PG_BIN)/createdb -h $(SERVER_DIR) -p $(PG_PORT) -U mlflow mlflow; \
	echo "PostgreSQL: 127.0.0.1:$(PG_PORT), data in $(SERVER_DIR)/pgdata (stop: make server-stop)"; \
	echo "mlflow server: http://127.0.0.1:$(SERVER_PORT), artifacts in $(SERVER_DIR)/artifacts (stop: Ctrl-C)"; \
	exec $(BIN)/mlflow server --backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1:$(PG_PORT)/mlflow \
	  --artifacts-destination $(SERVER_DIR)/artifacts --serve-artifacts --host 127.0.0.1 --port $(SERVER_PORT) --workers 2

server-stop:
	$(AS_PG) $(PG_BIN)/pg_ctl -D $(SERVER_DIR)/pgdata -m fast -w stop

## Benchmarks (benchmarks/README.md): drift vs Evidently, false drift by batch size, pipeline, scaling to 1M rows, serving vs mlflow under wrk.
## About an hour; rewrites benchmarks/results/ and benchmarks/README.md. BENCH_DURATION: seconds per wrk case.
EVIDENTLY_VENV := benchmarks/.venv-evidently
TOOLS_VENV     := benchmarks/.venv-tools
BENCH_DURATION ?= 30

$(EVIDENTLY_VENV)/.installed: benchmarks/requirements-evidently.lock
	$(PYTHON) -m venv $(EVIDENTLY_VENV)
	$(EVIDENTLY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(EVIDENTLY_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-evidently.lock
	touch $@

## Evidently in its own venv (it needs pandas < 3): the drift comparison of `make bench`, and its smoke in `make test`.
install-evidently: $(EVIDENTLY_VENV)/.installed

$(TOOLS_VENV)/.installed:
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet py-spy pyinstrument
	touch $@

.PHONY: bench bench-smoke
bench: install install-evidently $(TOOLS_VENV)/.installed
	command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python benchmarks/bench_drift.py
	$(BIN)/python benchmarks/bench_false_drift.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_scaling.py
	$(BIN)/python benchmarks/bench_serving.py --duration $(BENCH_DURATION)
	$(BIN)/python benchmarks/report.py

## Every benchmark at a tiny size (about two minutes); the Evidently comparison is skipped when its venv is absent.
bench-smoke: install
	$(BIN)/pytest -q tests/test_bench_smoke.py

clean:
	rm -rf $(VENV) reports/*/ reports/index.html mlruns.db mlartifacts site .cache/docs
