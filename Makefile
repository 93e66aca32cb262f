# Live Event Service. `make run` and `make test` work on a bare machine with python3 + make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint format bench bench-quick clean migrate seed

$(STAMP): pyproject.toml constraints.txt
	@# Debian's python3 may lack ensurepip (package python3-venv): fall back to get_pip
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && $(PYTHON) -m venv --without-pip $(VENV) \
		&& $(VENV)/bin/python .ci/get_pip.py; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## run: web + relay + worker on the embedded defaults (SQLite, embedded Redis)
run: $(STAMP)
	$(PY) -m webapp.launcher

## test: lint, format check and the whole test suite
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

migrate: $(STAMP)
	$(VENV)/bin/flask --app webapp db upgrade

## bench: the benchmark on PostgreSQL + Redis + gunicorn (writes bench/results and docs/PERFORMANCE.md)
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
