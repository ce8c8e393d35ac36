"""notebooks/05_instruction_tuning.ipynb executes headless (nbclient, a real kernel) on a subset:
SmolLM2's greedy answers to "Review: …\\nSentiment:" before and after a LoRA SFT, and the merged
export answering the same with plain transformers.

The full-size run (2,000 training rows, 500 held out) is
``LLMOS_SFT_TRAIN_ROWS=2000 LLMOS_SFT_EVAL_ROWS=500 python notebooks/run.py notebooks/05_instruction_tuning.ipynb``.
"""
from __future__ import annotations

import re

import pytest

from test_notebooks import execute


@pytest.mark.slow
def test_instruction_tuning_on_a_subset(pulled, tmp_path, monkeypatch):
    lines, nb = execute("05_instruction_tuning.ipynb", tmp_path, monkeypatch,
                        LLMOS_SFT_TRAIN_ROWS=100, LLMOS_SFT_EVAL_ROWS=40)
    text = "\n".join(l for l in lines if l.startswith("RESULT"))
    assert "RESULT rows: 100 train, 40 held out" in text
    before = re.search(r"RESULT before: accuracy ([0-9.]+) \(valid answers ([0-9.]+)\) on 40 rows", text)
    after = re.search(r"RESULT after: accuracy ([0-9.]+) \(valid answers ([0-9.]+)\) on 40 rows", text)
    told = re.search(r"RESULT before, one-word instruction: accuracy ([0-9.]+) \(valid answers ([0-9.]+)\) on 40 rows", text)
    assert before and after and told, text
    b_acc, b_valid, a_acc, a_valid, t_acc, t_valid = map(float, before.groups() + after.groups() + told.groups())
    # the instruct model as it comes rarely answers with the label word; after 7 LoRA steps it does
    assert b_valid <= 0.5 and t_valid <= 0.6 and a_valid >= 0.9, text
    assert a_acc >= max(b_acc, t_acc) + 0.15, text
    m = re.search(r"RESULT export: plain transformers answers '(\w+)', llmos answered '(\w+)'", text)
    assert m and m.group(1) == m.group(2) and m.group(1) in ("positive", "negative"), text
    chat = [o for c in nb.cells if c.source.startswith("%%llm chat") for o in c.get("outputs", [])]
    assert chat and chat[0]["text"].strip().split()[0] in ("positive", "negative")
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    warned = [o for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not warned, warned  # no library warnings or tqdm bars in the saved notebook
