"""A Llama-type model (SmolLM2, pad token = eos) as a sequence classifier on a padded batch.

Each row's logits must equal the same text run alone within 1e-5, padded left and right, and a
real trailing eos must be pooled as a real token (transformers' own pooling takes it for padding).
"""

from __future__ import annotations

import pytest

TEXTS = ["great movie", "this film was a complete waste of two hours"]


def _logits(model, tok, texts, side):
    import torch

    tok.padding_side = side
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.float(), enc


def _check_padding_sides(model, tok):
    import torch

    alone = torch.cat([_logits(model, tok, [t], "right")[0] for t in TEXTS])  # (2, C)
    for side in ("left", "right"):
        batch, enc = _logits(model, tok, TEXTS, side)
        assert enc["attention_mask"].sum() < enc["attention_mask"].numel()  # really padded
        assert (batch - alone).abs().max().item() <= 1e-5, side
    return alone


@pytest.fixture(scope="module")
def smollm2_cls():
    from llmos_jupyter.models.loading import load

    L = load("smollm2-135m-instruct", task="seq-cls", labels=["negative", "positive"])
    return L


def test_smollm2_seq_cls_pools_the_last_real_token_in_a_padded_batch(smollm2_cls):
    import torch

    model, tok = smollm2_cls.model, smollm2_cls.tokenizer
    assert tok.pad_token_id == tok.eos_token_id == 2 and model.config.pad_token_id == 2
    assert smollm2_cls.labels == ["negative", "positive"]
    alone = _check_padding_sides(model, tok)
    assert not torch.allclose(alone[0], alone[1])  # the two texts really get different logits

    # a real trailing eos is a real token: pooled there, in a batch as alone
    eos_text = TEXTS[0] + tok.eos_token
    tok.padding_side = "right"
    both, enc = _logits(model, tok, [eos_text, TEXTS[1]], "right")
    single, enc1 = _logits(model, tok, [eos_text], "right")
    assert enc1["input_ids"][0, -1].item() == tok.eos_token_id
    assert (both[0] - single[0]).abs().max().item() <= 1e-5
    # it differs from the text without the eos (the eos position is what gets pooled) ...
    assert (single[0] - alone[0]).abs().max().item() > 1e-3
    # ... whereas transformers' pad-id pooling skips the real eos and pools "movie" instead
    hf = type(model).forward(model, **enc1).logits.float()
    assert (hf[0] - alone[0]).abs().max().item() <= 1e-4


def test_tiny_llama_classifier_trains_with_padding(tiny_llama, tmp_path):
    """The mask pooling survives LoRA wrapping (peft calls the instance's forward) and a save/reload."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmos_jupyter.models.pooling import pool_by_attention_mask

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, num_labels=2, pad_token_id=tok.pad_token_id
    ).eval()
    assert pool_by_attention_mask(model)
    _check_padding_sides(model, tok)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    _check_padding_sides(peft_model, tok)
    tok.padding_side = "left"
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    out = peft_model(**enc, labels=torch.tensor([1, 0]))
    assert out.loss is not None and out.loss.item() > 0 and out.logits.shape == (2, 2)
