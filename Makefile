# One command each: `make run` sets up and serves a model; `make test` sets up and tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup redis haproxy browser

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,dev]'
	touch $(STAMP)

setup: $(STAMP)

# Tests start their own redis-server processes; Debian's package provides the binary.
# Non-interactive: CI runs this on a fresh machine with no terminal.
redis:
	@command -v redis-server >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "redis-server is missing: install it (apt-get install redis-server) or run make as root" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

# tests/deploy/test_compose_scale.py checks deploy/haproxy.cfg with HAProxy's own parser.
haproxy:
	@command -v haproxy >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "haproxy is missing: install it (apt-get install haproxy) or run make as root" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy >/dev/null; }

# tests/app/test_web.py drives Debian's headless Chromium through its chromedriver (selenium).
browser:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { \
	  [ "$$(id -u)" = 0 ] || { echo "chromium / chromedriver missing: install them (apt-get install chromium chromium-driver) or run make as root" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy app model

test: setup redis haproxy browser lint
	$(BIN)/pytest -q

# `make run DATA=data/ml-100k` trains the first model on MovieLens instead of synthetic data.
run: setup
	$(BIN)/fmrec demo $(if $(DATA),--data $(DATA))

# Training benchmark, one command (< 10 min on 2 cores): prints tables, writes
# bench/results/train.json and train.png. `make bench-train DATA=path/to/ml-100k`.
.PHONY: bench-train
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[cpu,bench]'
	touch $(BENCH_STAMP)

bench-train: $(BENCH_STAMP)
	$(BIN)/python -m bench.train $(if $(DATA),--data $(DATA))

# Serving benchmark, one command (< 10 min on 2 cores): wrk against `fmrec serve`, the bare
# web stack and a naive full-row FM; prints tables, writes bench/results/serve.json and
# serve.png. `make bench-serve DATA=path/to/ml-100k`.
.PHONY: bench-serve wrk
wrk:
	@command -v wrk >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "wrk is missing: install it (apt-get install wrk) or run make as root" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

bench-serve: $(BENCH_STAMP) redis wrk
	$(BIN)/python -m bench.serve $(if $(DATA),--data $(DATA))

# Approximate top-N benchmark (docs/ann.md): synthetic 100k and 1M-movie catalogs, index
# build time and bundle size, recall@10 against the exact path, /recommend p99 under wrk
# for both paths; writes bench/results/ann.json. Slow: the 1M indexes take many minutes.
.PHONY: bench-ann
bench-ann: $(BENCH_STAMP) redis wrk
	$(BIN)/python -m bench.ann

# Redis Cluster (3 local masters) vs one Redis, same run (docs/scale-out.md): cached
# /recommend and POST /ratings; writes bench/results/cluster.json. About 8 min on 2 cores.
.PHONY: bench-cluster
bench-cluster: $(BENCH_STAMP) redis wrk
	$(BIN)/python -m bench.cluster $(if $(DATA),--data $(DATA))

# `docker compose up`, for real (README, Docker): the CPU stack on this host's Docker daemon,
# then two API replicas behind HAProxy, on one Redis and on a 3-master Redis Cluster,
# checked end to end; writes bench/results/compose.json and README's table. Base images the
# host cannot pull are built from Debian packages (debootstrap), once. Exit status 3: this
# host cannot run it (no Docker daemon), said on one line.
.PHONY: compose-check debootstrap
debootstrap:
	@command -v debootstrap >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "debootstrap is missing: install it (apt-get install debootstrap) or run make as root" >&2; exit 1; }; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }

compose-check: setup debootstrap
	$(BIN)/python -m bench.compose_check

# Top-10 quality, one command (~15 min on 2 cores): fmrec's two heads against most rated,
# EASE and implicit ALS/BPR on ua and u1..u5, and a cold-start run; writes
# bench/results/ranking.json and README's tables. `make bench-ranking DATA=path/to/ml-100k`.
.PHONY: bench-ranking
bench-ranking: $(BENCH_STAMP)
	$(BIN)/python -m bench.ranking $(if $(DATA),--data $(DATA))
