"""notebooks/02_resources.ipynb executes headless (nbclient, a real kernel) and shows the policy:
LRU eviction, pins, keep-alive (timer and after-each-call), hot swap, a background job that
leaves MiniLM serving, estimate vs measured in ``%llm ps``.

Run: ``.venv/bin/python -m pytest tests/notebooks/test_resources_notebook.py -q`` (about a minute on 2 cores).
"""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_notebook_02_runs_and_shows_the_policy(notebook):
    executed = notebook("02_resources.ipynb")
    assert not executed.errors, executed.errors
    r = {key: json.loads(payload) for _, key, payload in
         (line.split(" ", 2) for line in executed.results.splitlines())}
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

    stdout, stderr, shown = (executed.outputs(kind) for kind in ("stdout", "stderr", "text/plain"))
    assert "llmos: evicted 'b' (335.25 KiB on cpu) to make room for 'c' (335.25 KiB)" in stdout
    assert "llmos: unloaded 'brief' after 2s idle (keep-alive 2s); 335.25 KiB released" in stderr
    assert "llmos: unloaded 'once' after the call (keep-alive 0s); 335.25 KiB released" in stderr
    assert "llmos: 'tinyclf' is being fine-tuned by job-1; wait with `%llm job wait job-1`" in stderr
    assert "after each call" in shown and "keep-alive" in shown and "estimated" in shown and "real" in shown
    assert "job-1: finetune tinyclf, running" in shown
