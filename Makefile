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

test: lint
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) runs
