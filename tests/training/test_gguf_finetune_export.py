"""A GGUF causal LM trains, saves and reloads: the SmolLM2 GGUF, loaded through the API, is fine-tuned (LoRA and
full, causal-lm SFT on two instruction/response pairs), exported, and reloaded with plain
``AutoModelForCausalLM.from_pretrained(export_dir)`` with the same greedy logits.

Marked ``slow`` (the real 135M model); it still runs in CI.
"""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow

PAIRS = [
    {"instruction": "What is the capital of France?", "output": "Paris."},
    {"instruction": "Name a primary colour.", "output": "Blue."},
]


def _probe(model, tok, n_new=8):
    """Logits of the rendered probe prompt ``(1, L, V)`` and the greedy continuation ids."""
    import torch

    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits.float()
        out = model.generate(**enc, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id)
    return logits, out[0, enc["input_ids"].shape[1] :].tolist()


def test_gguf_finetune_export_reload(fresh_api, pulled, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    api = fresh_api
    msg = api.load("smollm2-135m-instruct", alias="smol", engine="transformers")
    from llmos_jupyter.models.loading import estimate

    est = estimate("smollm2-135m-instruct", "causal-lm", "float32")
    assert est["bytes"] == 134_515_008 * 4 == 538_060_032  # float32 tensors, not the 98 MB file
    assert msg["task"] == "causal-lm" and msg["estimated_bytes"] == est["real_bytes"] > est["bytes"]  # + tokenizer
    dv = api.data_load(PAIRS, name="pairs")
    assert (dv.prompt_column, dv.response_column) == ("instruction", "output")
    common = dict(epochs=10, lr=1e-3, batch_size=2, seed=0, progress=False, warmup_ratio=0.0)

    # LoRA: 10 steps, then export the merged model
    lora = api.finetune("smol", "pairs", method="lora", lora_dropout=0.0, **common)
    ck_state = json.loads((api.registry().run_dir(lora.id) / "checkpoint" / "trainer_state.json").read_text())
    lo = ck_state["train_loss"]
    assert len(lo) == 10 and all(math.isfinite(x) for x in lo) and lo[-1] < lo[0], lo
    api.export("smol", str(tmp_path / "lora-merged"), merge_lora=True)
    with api.manager().use("smol") as rec:
        mem_lora, _ = _probe(rec.model, rec.tokenizer)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "lora-merged").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "lora-merged")
    back_logits, _ = _probe(back, tok)
    d_lora = (back_logits - mem_lora).abs().max().item()
    assert d_lora < 1e-3, d_lora  # merged W + s·BA vs the adapter path: float rounding only
    man = json.loads((tmp_path / "lora-merged" / "llmos_manifest.json").read_text())
    assert man["run_id"] == lora.id and man["config"]["method"] == "lora" and man["merged_lora"] is True
    del back

    # full: a fresh load, 10 steps, export, plain reload: logits identical (max |Δ| = 0 in float32)
    api.load("smollm2-135m-instruct", alias="smol", replace=True)
    full = api.finetune("smol", "pairs", method="full", **common)
    fl = json.loads((api.registry().run_dir(full.id) / "checkpoint" / "trainer_state.json").read_text())["train_loss"]
    assert len(fl) == 10 and all(math.isfinite(x) for x in fl) and fl[-1] < fl[0], fl
    api.export("smol", str(tmp_path / "full"))
    with api.manager().use("smol") as rec:
        assert next(rec.model.parameters()).dtype == torch.float32
        mem_logits, mem_greedy = _probe(rec.model, rec.tokenizer)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "full")
    back_logits, back_greedy = _probe(back, tok)
    assert next(back.parameters()).dtype == torch.float32
    delta = (back_logits - mem_logits).abs().max().item()
    assert delta == 0.0 and back_greedy == mem_greedy
    print(
        f"GGUF fine-tune: LoRA loss {lo[0]:.3f} -> {lo[-1]:.3f}, full loss {fl[0]:.3f} -> {fl[-1]:.3f}; "
        f"merged-LoRA export max|Δ| {d_lora:.2e}; full export max|Δ| {delta}; greedy {tok.decode(back_greedy)!r}"
    )
