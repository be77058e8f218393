# Two commands on a fresh machine: `make up` and `make test`.
# Everything installs into .venv (and, later, the separate peers venv).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# chromadb pins clash with mitmproxy 11, so the Chroma server and the official
# chromadb client used by the end-to-end tests live in their own venv.
PEERS  := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

.PHONY: up test lint venv bench-eventlog bench-gateway bench-pipeline bench-plots clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

$(PEERS_STAMP): requirements-peers.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-peers.txt
	touch $(PEERS_STAMP)

venv: $(STAMP) $(PEERS_STAMP)

up: $(STAMP) $(PEERS_STAMP)
	$(VENV)/bin/embedguard up

# The test session itself starts every service it needs (Tansu broker, ...)
# on 127.0.0.1 and free ports.
test: $(STAMP) $(PEERS_STAMP)
	# the dashboard's browser test drives Debian's headless chromium
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/embedguard schemas check
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench-eventlog: $(STAMP)
	$(PY) bench/eventlog.py

# Loader throughput and query latency over 1M events (~15-20 min on 2 cores).
bench-pipeline: $(STAMP)
	$(PY) bench/pipeline.py

# Charts of the latest results (bench/results/*.json) into docs/img; matplotlib
# comes from the `bench` extra, which the test suite does not need.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-plots: $(BENCH_STAMP)
	$(PY) bench/plots.py

clean-venv:
	rm -rf $(VENV)

# Benchmarks are not part of `make test`. The gateway benchmark needs nginx
# (the upstream) and wrk (the load), both from Debian.
bench-gateway: $(STAMP)
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
	  (apt-get update -q && apt-get install -y -q nginx-light wrk)
	$(PY) bench/gateway.py
