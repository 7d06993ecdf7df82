# One command each: `make run` sets up and serves a model; `make test` sets up and tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup redis

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,dev]'
	touch $(STAMP)

setup: $(STAMP)

# Tests start their own redis-server processes; Debian's package provides the binary.
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy app model

test: setup redis lint
	$(BIN)/pytest -q

run: setup
	$(BIN)/fmrec demo
