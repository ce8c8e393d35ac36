"""Reproducibility and the LoRA classifier head on the packaged real model and data.

Marked ``slow``; they still run in CI (the model and data are pulled into LLMOS_HOME first).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llmos_jupyter.training import FinetuneConfig, finetune
from llmos_jupyter.training.finetune import reinit_untrained_head, sha256_file

pytestmark = pytest.mark.slow

PROBE = [
    "a gorgeous, witty, seductive movie",
    "this film was a complete waste of two hours",
    "great movie",
    "awful film",
]


def load_minilm(path, num_labels=2):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)


def test_same_seed_same_result(minilm_dir, rotten_tomatoes, tmp_path):
    """Same seed, same result: 32 Rotten Tomatoes rows, max_length 64, batch 8, 4 steps, seed 42, run twice in one
    process with the global RNGs scrambled in between: identical metrics, identical probe logits
    (torch.equal), identical checkpoint sha256."""
    import datasets
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    rows = rotten_tomatoes.sample(64, random_state=42).reset_index(drop=True)
    train = datasets.Dataset.from_pandas(rows.iloc[:32][["text", "label"]].reset_index(drop=True))
    ev = datasets.Dataset.from_pandas(rows.iloc[32:][["text", "label"]].reset_index(drop=True))
    cfg = FinetuneConfig(max_length=64, batch_size=8, seed=42)
    probe = tok(PROBE, padding=True, return_tensors="pt")
    runs, heads_at_load = [], []
    for i in range(2):
        torch.rand(100)
        random.random()
        model = load_minilm(minilm_dir)  # its new head is drawn from the (scrambled) global RNG
        heads_at_load.append(model.classifier.weight.detach().clone())
        res = finetune(
            model, tok, train, ev, text_column="text", label_column="label", config=cfg, run_dir=tmp_path / f"run{i}"
        )
        with torch.no_grad():
            logits = model(**probe).logits
        runs.append((res, logits))
    (a, la), (b, lb) = runs
    assert not torch.equal(heads_at_load[0], heads_at_load[1])  # the trap: the untrained head is random at each load
    assert a.steps == b.steps == 4 and a.status == b.status == "completed"
    assert a.head_reinitialized == ["classifier.weight", "classifier.bias"]
    assert a.metrics == b.metrics and a.metrics["n"] == 32
    assert a.train_loss == b.train_loss
    assert torch.equal(la, lb)
    assert a.checkpoint_sha256 == b.checkpoint_sha256 == sha256_file(b.checkpoint / "model.safetensors")
    print(f"same seed: metrics {a.metrics}, probe logits {la.tolist()}, sha256 {a.checkpoint_sha256}")


def test_lora_head_trained_saved_reloaded(minilm_dir, tmp_path):
    """The LoRA classifier head is trained and saved: LoRA r=4 on query/value, 5 AdamW steps at
    lr 1e-2 on two rows; reload in a fresh process with another torch seed: logits equal exactly;
    the adapter holds the trained head."""
    import datasets
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    train = datasets.Dataset.from_dict({"text": ["great movie", "awful film"], "label": [1, 0]})
    cfg = FinetuneConfig(
        method="lora",
        lora_r=4,
        target_modules=["query", "value"],
        lr=1e-2,
        epochs=5,
        batch_size=2,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        seed=0,
    )
    model = load_minilm(minilm_dir)
    res = finetune(model, tok, train, config=cfg, run_dir=tmp_path / "run")
    assert res.status == "completed" and res.steps == 5
    assert res.train_loss[-1] < res.train_loss[0]
    pm = res.model
    assert not pm.training
    enc = tok(PROBE, padding=True, return_tensors="pt")
    with torch.no_grad():
        mem = pm(**enc).logits  # (4, 2)
    assert mem[2].argmax().item() == 1 and mem[3].argmax().item() == 0  # it fits its two rows

    adapter = load_file(res.checkpoint / "adapter_model.safetensors")
    head_keys = sorted(k for k in adapter if "classifier" in k)
    assert any(k.endswith("classifier.weight") for k in head_keys) and any(
        k.endswith("classifier.bias") for k in head_keys
    ), head_keys
    assert any("lora_A" in k for k in adapter) and any("lora_B" in k for k in adapter)
    saved_w = adapter[[k for k in head_keys if k.endswith("classifier.weight")][0]]
    fresh = load_minilm(minilm_dir)
    reinit_untrained_head(fresh, cfg.seed)  # the head the run started from
    delta = (saved_w - fresh.classifier.weight.detach()).abs().max().item()
    assert delta > 1e-3, delta  # the head was trained
    np.save(tmp_path / "mem.npy", mem.numpy())

    script = textwrap.dedent(
        f"""
        import json, numpy as np, torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging
        from peft import PeftModel
        logging.set_verbosity_error()
        torch.manual_seed(12345)  # a different RNG state from the training process
        tok = AutoTokenizer.from_pretrained({str(res.checkpoint)!r})
        base = AutoModelForSequenceClassification.from_pretrained({str(minilm_dir)!r}, num_labels=2)
        plain = PeftModel.from_pretrained(base, {str(res.checkpoint)!r}).eval()
        enc = tok({PROBE!r}, padding=True, return_tensors="pt")
        with torch.no_grad():
            a = plain(**enc).logits
        from llmos_jupyter.training import load_checkpoint
        torch.manual_seed(999)
        ours, _ = load_checkpoint({str(res.checkpoint)!r})
        with torch.no_grad():
            b = ours(**enc).logits
        np.save({str(tmp_path / "plain.npy")!r}, a.numpy()); np.save({str(tmp_path / "ours.npy")!r}, b.numpy())
        """
    )
    import os

    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=os.getcwd())
    plain, ours = np.load(tmp_path / "plain.npy"), np.load(tmp_path / "ours.npy")
    assert np.array_equal(ours, plain), np.abs(ours - plain).max()  # llmos's reload = plain peft's, exactly
    # in-memory vs a fresh process: equal up to float32 rounding (seen: 1.2e-7 with torch 2.13 /
    # transformers 5.24, one ulp from a different kernel choice); the bug this guards against
    # (an untrained, unsaved head) is off by ~0.24
    assert np.abs(plain - mem.numpy()).max() <= 1e-6, np.abs(plain - mem.numpy()).max()
    state = json.loads((res.checkpoint / "trainer_state.json").read_text())
    assert state["method"] == "lora" and state["base_model"] == str(minilm_dir)
