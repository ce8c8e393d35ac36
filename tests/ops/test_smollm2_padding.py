"""A left-padded batch on the real packaged SmolLM2: the registered kernel keeps the padding mask."""

import pytest
import torch


@pytest.mark.slow
def test_smollm2_left_padded_batch_matches_sdpa(pulled):
    from llmos_jupyter.models.loading import load

    loaded = load("smollm2-135m-instruct", attn_implementation="sdpa")
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    enc = tok(["Hi", "The quick brown fox jumps over the lazy dog"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0  # really left-padded
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        ref = model(**enc).logits
        from llmos_jupyter.ops.registration import register

        model.set_attn_implementation(register())
        assert model.config._attn_implementation == "llmos_triton"
        ours = model(**enc).logits
    err = (ours - ref)[real].abs().max().item()
    print(f"SmolLM2 left-padded, max |triton - sdpa| on real tokens: {err:.2e}")
    assert err < 1e-3  # fp32; a dropped mask gives errors of ~19 logits
