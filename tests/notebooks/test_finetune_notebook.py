"""notebooks/04_finetune.ipynb executes headless (nbclient, a real kernel) on a stratified subset of
Rotten Tomatoes: MiniLM-L6 full fine-tune (2 epochs) and LoRA r=8 (3 epochs), each evaluated every
epoch with the best epoch kept, ``%llm eval`` of both, the runs compared, and the merged LoRA
export reloaded with plain transformers giving the same logits.

Run: ``.venv/bin/python -m pytest tests/notebooks/test_finetune_notebook.py -q`` (4-7 min measured on 2 cores
shared with other test runs: 850 rows x 2 full epochs + 850 x 3 LoRA epochs). The full split
(the issue's acceptance run, about 10 minutes on 2 idle cores) is
``LLMOS_FT_ROWS=0 .venv/bin/python notebooks/run.py notebooks/04_finetune.ipynb --out artifacts``.
"""
from __future__ import annotations

import json
import math
import re

import pytest

from notebook_kit import ROOT

ROWS = 1000  # 850 train / 150 test; 27 steps per epoch at batch 32
EXPORT = ROOT / "artifacts" / "04_finetune" / "minilm-lora-merged"  # the folder the notebook names


def _result(text: str, pattern: str) -> re.Match:
    m = re.search(pattern, text)
    assert m, f"no line matching {pattern!r} in:\n{text}"
    return m


@pytest.mark.slow
def test_finetune_walkthrough_on_a_subset(notebook):
    from llmos_jupyter.training.runs import RunRegistry

    ex = notebook("04_finetune.ipynb", LLMOS_FT_ROWS=ROWS)
    nb, text = ex.nb, ex.results
    train, test = ROWS - round(0.15 * ROWS), round(0.15 * ROWS)
    spe = math.ceil(train / 32)
    assert (f"RESULT rows used: {ROWS:,} of 8,530 Rotten Tomatoes reviews (train {train:,}, test {test:,}; "
            f"{spe} steps per epoch at batch 32)") in text

    run_line = r"accuracy ([0-9.]+), macro-F1 ([0-9.]+), best epoch (\d+) of (\d+), wall time (\d+) s \(run (ft-[\w-]+)\)"
    full = _result(text, r"RESULT full fine-tune: " + run_line)
    lora = _result(text, r"RESULT LoRA r=8 alpha=16: " + run_line)
    # measured on this subset (CPU, torch 2.13): full 0.7600 (best epoch 1), LoRA 0.7867 (best epoch 3);
    # 150 test rows make one row 0.67 points, so the floor leaves 9+ rows of margin; chance is 0.50
    assert float(full.group(1)) >= 0.70 and float(full.group(2)) >= 0.70, text
    assert float(lora.group(1)) >= 0.70 and float(lora.group(2)) >= 0.70, text
    assert full.group(4) == "2" and 1 <= int(full.group(3)) <= 2, text
    assert lora.group(4) == "3" and 1 <= int(lora.group(3)) <= 3, text
    gap = float(_result(text, r"RESULT gap full - LoRA: ([+-][0-9.]+) accuracy points on 150 test rows").group(1))
    assert gap == pytest.approx((float(full.group(1)) - float(lora.group(1))) * 100, abs=0.011)

    # the registry (in the notebook's LLMOS_HOME) holds both runs with the configs the notebook describes
    reg = RunRegistry(ex.home / "runs.sqlite")
    rf, rl = reg.get(full.group(6)), reg.get(lora.group(6))
    assert rf.status == rl.status == "completed"
    assert rf.config["method"] == "full" and rf.config["lr"] == 5e-5 and rf.config["epochs"] == 2
    assert rl.config["method"] == "lora" and rl.config["lora_r"] == 8 and rl.config["lora_alpha"] == 16
    assert rl.config["lr"] == 1e-3 and rl.config["epochs"] == 3
    for run, best in ((rf, full), (rl, lora)):
        assert run.config["eval_every"] == "epoch" and run.config["early_stopping_patience"] == 2
        assert run.metrics["best_epoch"] == float(best.group(3)) and run.metrics["n"] == test
        assert run.metrics["best_step"] == int(best.group(3)) * spe
    assert rf.data_fingerprint == rl.data_fingerprint  # the same split

    # `%llm eval` scores the kept (best) weights: the same accuracy as the run's metrics
    shown = [o["data"]["text/plain"] for c in nb.cells if c.source.startswith("%llm eval")
             for o in c.get("outputs", []) if "data" in o]
    assert len(shown) == 2, shown
    for out, run in zip(shown, (rf, rl)):
        assert out.startswith(f"accuracy {run.metrics['accuracy']:.4f} · macro_f1 {run.metrics['macro_f1']:.4f}"), out
        assert "confusion (rows = true, columns = predicted):" in out and "most confident mistakes:" in out

    # the merged export: plain transformers gives the llmos model's logits
    m = _result(text, r"RESULT export check: merged LoRA export reloaded with transformers, "
                      r"max \|Δ logits\| ([0-9.e+-]+) over 4 texts; same labels: (True|False)")
    assert float(m.group(1)) <= 1e-5 and m.group(2) == "True", text
    config = json.loads((EXPORT / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    manifest = json.loads((EXPORT / "llmos_manifest.json").read_text())
    assert manifest["run_id"] == rl.id and manifest["merged_lora"] is True
    assert not (EXPORT / "adapter_config.json").exists()

    assert not ex.errors
    stderr = [o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not [s for s in stderr if "llmos:" in s], stderr  # no magic reported a user error
