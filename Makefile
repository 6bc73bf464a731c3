# Two entry points for a fresh machine (see README): `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PGVERSION := $(shell ls /etc/postgresql 2>/dev/null | head -n1)

.PHONY: setup postgres demo test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Start the local PostgreSQL cluster if it is not answering.
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $(PGVERSION) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	  echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1

demo: setup postgres
	$(VENV)/bin/retail-etl demo

test: setup postgres
	$(VENV)/bin/pytest

# lint-imports: the layer contracts in pyproject.toml ([tool.importlinter]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy retail_etl blocks tasks flows cli
	$(VENV)/bin/lint-imports
