# `make bench` and `make test` work on a fresh machine: each creates .venv and
# installs the pinned dependencies first (torch 2.13.0 CPU wheel before anything
# else, so no CUDA build is pulled).
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: bench test lint format setup clean

$(STAMP): requirements.txt pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/privmed bench

# ruff (pinned in requirements.txt, configured in pyproject.toml) runs first: CI enforces the style
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# three pytest-xdist workers on the CI machine's 2 cores: the Flower deployment tests mostly wait on their servers
# (a SuperNode takes one message at a time, each in a new ClientApp process, and polls every 3 s when idle), so two
# workers run the rest of the suite meanwhile; --dist loadfile keeps each file's tests and module fixtures on one
# worker, in the order tests/conftest.py gives (the waiting files first)
test: lint
	$(VENV)/bin/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) runs
