# Two commands on a fresh machine: `make run` and `make test`. Both create .venv and install the
# pinned dependencies (requirements.lock) first; nothing relies on packages installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test check-clean check-export test-nbs test-py lab lock clean

$(STAMP): settings.ini setup.py requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

## Run the whole pipeline on the built-in dataset (or RUN_ARGS="--config my.yaml").
run: install
	$(BIN)/mlops-nb run $(RUN_ARGS)

## Every check, in CI's order: notebooks clean, export in sync, notebook tests, pytest.
test: install check-clean check-export test-nbs test-py

check-clean: install
	$(BIN)/nbstripout --verify nbs/*.ipynb

check-export: install
	$(BIN)/nbdev_export
	git diff --exit-code -- mlops_nb
	test -z "$$(git status --porcelain --untracked-files=all -- mlops_nb)" || { git status --short -- mlops_nb; echo "nbdev_export changed mlops_nb/: commit the export"; exit 1; }

test-nbs: install
	$(BIN)/nbdev_test --n_workers 2 --timing

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test-py: install
	$(BIN)/pytest $(PYTEST_ARGS) tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

## JupyterLab on the notebooks (127.0.0.1 only).
lab: install
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs

## Re-pin requirements.lock from a fresh resolve of settings.ini.
lock:
	rm -rf /tmp/mlops_nb-lock && $(PYTHON) -m venv /tmp/mlops_nb-lock
	/tmp/mlops_nb-lock/bin/pip install --quiet --upgrade pip
	/tmp/mlops_nb-lock/bin/pip install --quiet -e ".[dev]"
	/tmp/mlops_nb-lock/bin/pip freeze --exclude-editable | grep -v '^mlops.nb' > requirements.lock

clean:
	rm -rf $(VENV) reports/*/ reports/index.html mlruns.db mlartifacts
