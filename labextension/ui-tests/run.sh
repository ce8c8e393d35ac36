#!/usr/bin/env bash
# Browser test of the LLM OS side panel: galata + Playwright in Debian's Chromium.
#
#   bash labextension/ui-tests/run.sh          (from anywhere; CI runs it from .ci/run as root)
#
# Needs llmos-jupyter installed (pip install . or -e .) in $PYTHON (default: <repo>/.venv/bin/python,
# else python3), so that `jupyter labextension list` shows llmos-jupyter and the "llmos" kernelspec
# exists. Installs Chromium (apt) and the test's npm packages when missing, starts JupyterLab on
# 127.0.0.1 without a token, runs the tests, stops the server. Screenshots and failure artefacts
# go to <repo>/artifacts/. Exits non-zero on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ARTIFACTS="$ROOT/artifacts"
PORT="${LLMOS_UI_PORT:-8888}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$ARTIFACTS"
log() { echo "[ui-tests] $*"; }

# 1. Chromium from Debian (Playwright's own browser download is not reachable here).
CHROMIUM_PATH="${CHROMIUM_PATH:-$(command -v chromium || true)}"
if [[ -z "$CHROMIUM_PATH" ]]; then
  log "installing chromium (apt)"
  SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  CHROMIUM_PATH="$(command -v chromium)"
fi
export CHROMIUM_PATH

# 2. The test's npm packages (galata, @playwright/test), never a Playwright browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [[ ! -d "$HERE/node_modules/@jupyterlab/galata" ]]; then
  log "npm ci (galata)"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

# 3. The extension and the kernelspec must come from the installed package.
if ! "$PYTHON" -m jupyterlab.labextensions list 2>&1 | grep -E "llmos-jupyter .*enabled" >/dev/null; then
  log "llmos-jupyter is not an enabled lab extension for $PYTHON:"
  "$PYTHON" -m jupyterlab.labextensions list 2>&1 || true
  log "fix: $PYTHON -m pip install -e $ROOT   (needs node/npm: the build hook builds labextension/)"
  exit 1
fi
if ! "$PYTHON" -m jupyter_client.kernelspecapp list 2>/dev/null | grep -E "^\s+llmos\s" >/dev/null; then
  log "the 'llmos' kernelspec is not installed for $PYTHON (pip install the package again)"
  exit 1
fi

# 4. JupyterLab on loopback, no token; kernels can import the test helpers (tests/tiny_kit.py:
#    the tiny random models the Python tests use too).
SERVER_LOG="$ARTIFACTS/ui-jupyter-server.log"
export PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
export JUPYTERLAB_GALATA_ROOT_DIR="$(mktemp -d /tmp/llmos-ui-root.XXXXXX)"
export LLMOS_HOME="${LLMOS_HOME:-$JUPYTERLAB_GALATA_ROOT_DIR/.llmos_home}"
export LLMOS_UI_PORT="$PORT"
export TARGET_URL="http://127.0.0.1:$PORT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One torch thread per kernel: the tiny fine-tunes share the cores with Chromium and the server,
# and two spinning OpenMP threads on a busy 2-core machine make a step ~20x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
log "starting JupyterLab on $TARGET_URL (log: $SERVER_LOG)"
(cd "$HERE" && exec "$PYTHON" -m jupyterlab --config "$HERE/jupyter_server_test_config.py" \
  --allow-root --no-browser) >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
stop_server() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$JUPYTERLAB_GALATA_ROOT_DIR"
}
trap stop_server EXIT

up() { "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
  "$TARGET_URL/api/status" >/dev/null 2>&1; }
for _ in $(seq 120); do
  up && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "JupyterLab exited:"; tail -40 "$SERVER_LOG"; exit 1; fi
  sleep 0.5
done
up || { log "JupyterLab did not start in 60 s"; tail -40 "$SERVER_LOG"; exit 1; }

# 5. The tests.
log "running galata tests"
cd "$HERE"
status=0
npx playwright test "$@" || status=$?
if [[ $status -ne 0 ]]; then
  log "FAILED (exit $status); server log tail:"
  tail -40 "$SERVER_LOG" || true
else
  log "screenshots: $(ls "$ARTIFACTS"/llmos-panel*.png 2>/dev/null | tr '\n' ' ')"
fi
exit $status
