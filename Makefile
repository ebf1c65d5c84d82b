# Drink Machine: `make run` starts the whole machine, `make test` runs every test.
# Both create the virtual environment (.venv) and install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run backend machine test test-fast lint format screenshots chaos clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) main.py up

# Fleet mode: the shared backend (WORKERS processes of each worker service), and the agent on a
# vending machine (BACKEND_URL, VENDING_MACHINE_ID and MACHINE_TOKEN in the environment or .env).
WORKERS ?= 1
backend: $(VENV)/.runtime
	$(PY) main.py backend --workers $(WORKERS)

machine: $(VENV)/.runtime
	$(PY) main.py machine

test: $(VENV)/.dev
	@{ command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ]; } && \
		command -v zbarimg >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		  apt-get install -y -qq chromium zbar-tools >/dev/null; } || \
		echo "Chromium or zbarimg missing: browser tests skip (they fail when CI=true)"
	@{ command -v redis-server >/dev/null && command -v redis-cli >/dev/null; } || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		  apt-get install -y -qq redis-server redis-tools >/dev/null; } || \
		echo "redis-server or redis-cli missing: Redis (Cluster) tests skip (they fail when CI=true)"
	$(PY) -m pytest

# The unit tests only: no redis-server, no process of the machine, no browser (under a minute).
test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not integration and not browser and not slow"

screenshots: $(VENV)/.dev
	$(PY) docs/screenshots.py

chaos: $(VENV)/.dev
	$(PY) bench/chaos.py --purchases 1000

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy constants cores services sandbox

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
