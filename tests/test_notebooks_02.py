"""notebooks/02_resources.ipynb executes headless (nbclient, a real kernel) and shows the policy:
LRU eviction, pins, keep-alive (timer and after-each-call), hot swap, a background job that
leaves MiniLM serving, estimate vs measured in ``%llm ps``.

Run: ``.venv/bin/python -m pytest tests/test_notebooks_02.py -q`` (about a minute on 2 cores).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_resources.ipynb"


@pytest.fixture(scope="module")
def executed(pulled):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_home = os.environ["LLMOS_HOME"]  # the shared test home, where MiniLM is already pulled
    assert (Path(env_home) / "models" / "all-minilm-l6-v2").is_dir()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def outputs(nb, kind: str) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if kind in ("stdout", "stderr") and o.output_type == "stream" and o.name == kind:
                out.append(o.text)
            elif kind == "text/plain" and "data" in o:
                out.append(o.data.get("text/plain", ""))
    return "\n".join(out)


def results(nb) -> dict:
    found = {}
    for line in outputs(nb, "stdout").splitlines():
        if line.startswith("RESULT "):
            _, key, payload = line.split(" ", 2)
            found[key] = json.loads(payload)
    return found


@pytest.mark.slow
def test_notebook_02_runs_and_shows_the_policy(executed):
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    r = results(executed)
    assert r["eviction"] == {"loaded": ["a", "c"], "evicted": ["b"]}
    assert r["pins"] == {"loaded": ["a", "d"], "evicted": ["b", "c"]}  # pinned LRU 'a' stays; 'c' goes
    assert r["keepalive"]["loaded"] == ["stays"] and sorted(r["keepalive"]["expired"]) == ["brief", "once"]
    assert r["keepalive"]["stays_keep_alive_s"] == 600.0
    assert r["hotswap"] == {"task": "embedding", "loaded": ["stays"]}
    assert r["jobs"]["state_during"] == "running" and r["jobs"]["final"] == "cancelled" and r["jobs"]["after"]
    assert all(label in ("negative", "positive") for label in r["jobs"]["served"]) and len(r["jobs"]["served"]) == 2
    ps = {m["alias"]: m for m in r["ps"]}
    assert ps["minilm"]["tensors"] == 90_864_136  # the weights alone; real adds the tokenizer and allocations
    for alias in ("minilm", "tinyclf"):
        assert abs(ps[alias]["estimated"] - ps[alias]["real"]) <= 0.10 * ps[alias]["real"], ps

    stdout, stderr, shown = outputs(executed, "stdout"), outputs(executed, "stderr"), outputs(executed, "text/plain")
    assert "llmos: evicted 'b' (335.25 KiB on cpu) to make room for 'c' (335.25 KiB)" in stdout
    assert "llmos: unloaded 'brief' after 2s idle (keep-alive 2s); 335.25 KiB released" in stderr
    assert "llmos: unloaded 'once' after the call (keep-alive 0s); 335.25 KiB released" in stderr
    assert "llmos: 'tinyclf' is being fine-tuned by job-1; wait with `%llm job wait job-1`" in stderr
    assert "after each call" in shown and "keep-alive" in shown and "estimated" in shown and "real" in shown
    assert "job-1: finetune tinyclf, running" in shown
