"""causal-lm supervised fine-tuning on a tiny random Llama: masking, padding, learning, reload."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmos_jupyter.errors import NotFoundError, UsageError
from llmos_jupyter.training import FinetuneConfig, finetune, load_checkpoint
from llmos_jupyter.training.sft import IGNORE_INDEX, collate_sft, evaluate_causal_lm, render_pair, tokenize_pairs

PAIRS = {"prompt": ["hello world", "what is the capital of france?"], "response": ["great movie", "paris."]}


@pytest.fixture
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token  # as models/loading.py does for Llama-type tokenizers
    return lambda: AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), tok


@pytest.fixture(scope="module")
def pairs():
    import datasets

    return datasets.Dataset.from_dict(PAIRS)


def test_prompt_masked_response_labelled(llama, pairs):
    _, tok = llama
    t = tokenize_pairs(tok, pairs, "prompt", "response", 128)
    for i, (p, r) in enumerate(zip(PAIRS["prompt"], PAIRS["response"])):
        ids, lab = t.ids[t.offsets[i] : t.offsets[i + 1]], t.labels[t.offsets[i] : t.offsets[i + 1]]
        ptext, rtext = render_pair(tok, p, r)
        assert ptext == f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" and rtext == f"{r}<|im_end|>\n"
        n_prompt = len(tok(ptext, add_special_tokens=False)["input_ids"])
        assert (lab[:n_prompt] == IGNORE_INDEX).all() and (lab[n_prompt:] == ids[n_prompt:]).all()
        assert tok.decode(ids[n_prompt:]) == rtext  # exactly the reply and the end-of-turn tokens
        assert t.targets[i] == len(ids) - n_prompt
    # truncation keeps the left part; a max_length inside the prompt leaves no target -> one line
    short = tokenize_pairs(tok, pairs, "prompt", "response", 27)
    assert short.lengths.max() == 27 and short.targets.tolist() == [3, 0]
    with pytest.raises(UsageError, match="max_length=5"):
        tokenize_pairs(tok, pairs, "prompt", "response", 5)
    with pytest.raises(NotFoundError, match="reply"):
        tokenize_pairs(tok, pairs, "prompt", "reply", 64)


def test_dynamic_padding(llama, pairs):
    _, tok = llama
    t = tokenize_pairs(tok, pairs, "prompt", "response", 128)
    b = collate_sft(t, np.array([0, 1]), pad_id=tok.pad_token_id)
    L = int(t.lengths.max())
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (2, L)  # padded to the longest row
    short = int(t.lengths.min())
    i_short = int(np.argmin(t.lengths))
    assert b["attention_mask"][i_short].tolist() == [1] * short + [0] * (L - short)
    assert (b["labels"][i_short, short:] == IGNORE_INDEX).all() and (
        b["input_ids"][i_short, short:] == tok.pad_token_id
    ).all()
    one = collate_sft(t, np.array([i_short]), pad_id=tok.pad_token_id)
    assert one["input_ids"].shape == (1, short)  # a batch alone is not padded at all


@pytest.mark.parametrize("method", ["full", "lora"])
def test_causal_lm_learns_and_reloads(llama, pairs, tmp_path, method):
    import torch

    make, tok = llama
    model = make()
    before = evaluate_causal_lm(model, tok, pairs)
    assert before.perplexity == pytest.approx(math.exp(before.loss)) and before.n == 2 and before.tokens == 13
    cfg = FinetuneConfig(task="causal-lm", method=method, epochs=10, batch_size=2, lr=1e-2, warmup_ratio=0.0, seed=3)
    r = finetune(model, tok, pairs, pairs, config=cfg, run_dir=tmp_path / "run")
    assert r.status == "completed" and r.steps == 10 and r.head_reinitialized == []
    assert all(math.isfinite(x) for x in r.train_loss)
    assert r.train_loss[0] == pytest.approx(before.loss, abs=1e-4)  # step 1 sees the untouched model
    assert r.train_loss[-1] < r.train_loss[0] - (1.5 if method == "full" else 0.05)
    assert set(r.metrics) == {"loss", "perplexity", "n", "tokens"} and r.metrics["loss"] < before.loss
    reloaded, _ = load_checkpoint(r.checkpoint)
    probe = tok(["hello world"], return_tensors="pt")
    with torch.no_grad():
        a, b = r.model(**probe).logits, reloaded(**probe).logits
    assert torch.equal(a, b)
    print(
        f"{method}: loss {r.train_loss[0]:.3f} -> {r.train_loss[-1]:.3f}; eval ppl {before.perplexity:.1f} -> "
        f"{r.metrics['perplexity']:.1f}"
    )


def test_causal_lm_same_seed_same_result(llama, pairs, tmp_path):
    import torch

    make, tok = llama
    cfg = FinetuneConfig(task="causal-lm", epochs=3, batch_size=1, lr=1e-3, seed=5)
    runs = []
    for i in range(2):
        torch.rand(10)
        runs.append(finetune(make(), tok, pairs, config=cfg, run_dir=tmp_path / f"r{i}"))
    assert runs[0].train_loss == runs[1].train_loss and runs[0].checkpoint_sha256 == runs[1].checkpoint_sha256


def test_causal_lm_errors(llama, pairs, tiny_model, sentiment):
    make, tok = llama
    with pytest.raises(UsageError, match="causal LM"):
        finetune(tiny_model(), tok, pairs, config=FinetuneConfig(task="causal-lm"))
    with pytest.raises(UsageError, match=r"match no module.*q_proj"):
        finetune(make(), tok, pairs, config=FinetuneConfig(task="causal-lm", method="lora", target_modules=["query"]))
    with pytest.raises(NotFoundError, match="prompt"):
        finetune(make(), tok, sentiment[0], config=FinetuneConfig(task="causal-lm"))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_response_only_logits_equal_full_logits(llama, pairs, method):
    """response_loss_sum projects only response positions; loss and gradients equal the full-logits path."""
    import torch

    from llmos_jupyter.training.sft import _decoder_and_head, response_loss_sum, token_loss_sum

    make, tok = llama
    model = make()
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    assert _decoder_and_head(model) is not None  # the fast path is taken
    t = tokenize_pairs(tok, pairs, "prompt", "response", 128)
    b = collate_sft(t, np.arange(len(t)), tok.pad_token_id)
    grads = []
    for fn in (
        lambda: token_loss_sum(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]),
        lambda: response_loss_sum(model, b["input_ids"], b["attention_mask"], b["labels"]),
    ):
        model.zero_grad()
        loss = fn()
        loss.backward()
        grads.append((float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (full, g_full), (fast, g_fast) = grads
    assert full > 1.0 and abs(full - fast) <= 1e-5 * full
    assert len(g_full) == len(g_fast) and all(
        torch.allclose(a, c, atol=1e-6, rtol=1e-5) for a, c in zip(g_full, g_fast)
    )


def test_response_only_logits_fallback_for_softcapped_heads(llama):
    from llmos_jupyter.training.sft import _decoder_and_head

    make, _ = llama
    model = make()
    model.config.final_logit_softcapping = 30.0
    assert _decoder_and_head(model) is None
