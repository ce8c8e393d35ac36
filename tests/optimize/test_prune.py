"""Pruning of tiny models: magnitude sparsity is exact and permanent; structured pruning really
shrinks the matrices, keeps the best-scoring heads/neurons, and (where a config can describe
it) survives save_pretrained + from_pretrained."""

from __future__ import annotations

import pytest

from llmos_jupyter.errors import UsageError
from llmos_jupyter.optimize import prune


def test_magnitude_sparsity_is_exact_and_permanent(tiny_bert_cls, ids):
    import torch

    model = tiny_bert_cls()
    head_before = model.classifier.weight.clone()
    layers = prune.prunable_linears(model)
    weights = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
    n, k = weights.numel(), round(0.3 * weights.numel())
    cut = weights.kthvalue(k).values  # the k-th smallest magnitude: everything at or below goes
    info = prune.magnitude(model, 0.3)
    assert info["weights"] == n and info["zeros"] == k, info
    assert info["sparsity"] == pytest.approx(k / n) and prune.sparsity(model) == pytest.approx(k / n)
    for _, m in layers:  # permanent: no mask, no saved original, no forward pre-hook
        assert not hasattr(m, "weight_mask") and not hasattr(m, "weight_orig") and not m._forward_pre_hooks
        assert isinstance(m.weight, torch.nn.Parameter)
        kept = m.weight.detach().abs()[m.weight != 0]
        assert kept.numel() == 0 or kept.min() >= cut  # only the smallest went
    assert torch.equal(model.classifier.weight, head_before)  # the output head is not pruned
    with torch.inference_mode():
        assert model(**ids).logits.shape == (3, 2)


@pytest.mark.parametrize("amount", [0, 1, 1.5, -0.1, "x"])
def test_amount_outside_zero_one_is_one_line(amount, tiny_bert_cls):
    with pytest.raises(UsageError, match=r"strictly between 0 and 1 \(got .*\); e\.g\. --prune 0\.3"):
        prune.magnitude(tiny_bert_cls(), amount)


def test_bert_ffn_shrinks_keeps_best_neurons_and_reloads(tiny_bert_cls, ids, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = tiny_bert_cls()
    layer = model.bert.encoder.layer[0]
    with torch.no_grad():  # neuron 5 of layer 0 carries nothing: it must be among those removed
        layer.intermediate.dense.weight[5].zero_()
    info = prune.structured(model, 0.25, "ffn")
    assert info["ffn_before"] == 64 and info["ffn_after"] == 48 and model.config.intermediate_size == 48
    for lyr in model.bert.encoder.layer:
        assert lyr.intermediate.dense.weight.shape == (48, 32) and lyr.intermediate.dense.bias.shape == (48,)
        assert lyr.output.dense.weight.shape == (32, 48)
    assert not (layer.intermediate.dense.weight.abs().sum(1) == 0).any()  # the dead neuron went
    model.save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()  # a plain config describes it
    with torch.inference_mode():
        assert torch.allclose(plain(**ids).logits, model(**ids).logits, atol=1e-6)
    assert prune.exportable(model)


def test_bert_heads_shrink_and_forward(tiny_bert_cls, ids):
    import torch

    model = tiny_bert_cls()
    att = model.bert.encoder.layer[1].attention
    with torch.no_grad():  # head 2 of layer 1 (rows 16:24 of W_q/W_k/W_v, columns of W_o) carries nothing
        for lin in (att.self.query, att.self.key, att.self.value):
            lin.weight[16:24].zero_()
        att.output.dense.weight[:, 16:24].zero_()
    info = prune.structured(model, 0.25, "heads")
    assert info["heads_before"] == 4 and info["heads_after"] == 3
    for lyr in model.bert.encoder.layer:
        a = lyr.attention
        assert a.self.query.weight.shape == a.self.key.weight.shape == a.self.value.weight.shape == (24, 32)
        assert a.output.dense.weight.shape == (32, 24) and a.self.num_attention_heads == 3
    assert (att.self.query.weight.abs().sum(1) > 0).all()  # the empty head was the one removed
    with torch.inference_mode():
        out = model(**ids).logits
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert not prune.exportable(model)  # a BERT config cannot say "3 heads of 8 in 32 dims"


def test_llama_grouped_heads_and_ffn_shrink_and_reload(tiny_llama_lm, ids, tmp_path):
    """4 query heads in 2 key/value groups: pruning 0.5 keeps 1 query head per group, the
    key/value heads stay; the config (head_dim, num_attention_heads) describes the result."""
    import torch
    from transformers import AutoModelForCausalLM

    model = tiny_llama_lm()
    info = prune.structured(model, 0.5, "heads,ffn")
    assert (info["heads_before"], info["heads_after"], info["ffn_after"]) == (4, 2, 32)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 2, 8, 32)
    for lyr in model.model.layers:
        a = lyr.self_attn
        assert a.q_proj.weight.shape == (16, 32) and a.o_proj.weight.shape == (32, 16)
        assert a.k_proj.weight.shape == a.v_proj.weight.shape == (16, 32) and a.num_key_value_groups == 1
        assert lyr.mlp.gate_proj.weight.shape == lyr.mlp.up_proj.weight.shape == (32, 32)
        assert lyr.mlp.down_proj.weight.shape == (32, 32)
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        assert torch.allclose(plain(**ids).logits, model(**ids).logits, atol=1e-5)


def test_structured_refusals_are_one_line(tiny_bert_cls, tiny_llama_lm):
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(UsageError, match="unknown --structured 'rows'; use heads, ffn or heads,ffn"):
        prune.structured(tiny_bert_cls(), 0.3, "rows")
    with pytest.raises(UsageError, match="structured pruning knows BERT-type .* not 'gpt2'; use --prune AMOUNT"):
        prune.structured(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)), 0.3, "ffn")
    with pytest.raises(UsageError, match=r"--prune 0.1 of 2 heads per group removes none"):
        prune.structured(tiny_llama_lm(), 0.1, "heads")


def test_pruned_layers_keep_the_marks_of_loaded_weights(tiny_bert_cls):
    """A fine-tune re-initialises parameters without the marks transformers (loaded) or llmos
    (trained) put on them; the shrunk layers must keep them, or a recovery fine-tune would
    start the pruned layers from random weights."""
    from llmos_jupyter.optimize.driver import clone
    from llmos_jupyter.training.finetune import untrained_head_params

    model = tiny_bert_cls()
    for name, p in model.named_parameters():
        p._is_hf_initialized = True
        if name.startswith("classifier"):
            p._llmos_trained = True
    copy = clone(model)  # a deep copy drops parameter attributes; clone carries them
    assert untrained_head_params(copy) == []
    prune.structured(copy, 0.5, "heads,ffn")
    assert untrained_head_params(copy) == []
    assert all(getattr(p, "_is_hf_initialized", False) for p in copy.parameters())


def _labelled(ids, lm: bool):
    import torch

    if lm:  # next-token loss on the real tokens
        return {**ids, "labels": ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)}
    return {**ids, "labels": torch.tensor([0, 1, 1])}


def test_taylor_scores_equal_sum_of_weight_times_gradient(tiny_bert_cls, ids):
    """Each FFN neuron's score is (Σ w·∂L/∂w)² over its row of W_in (with its bias) and its column
    of W_out, summed over batches; each head's over its rows of W_q/W_k/W_v and columns of W_o.
    Checked against gradients taken by hand; requires_grad, mode and .grad are put back."""
    import torch

    model = tiny_bert_cls()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # a frozen part stays frozen
    batches = [_labelled(ids, lm=False), {k: v[:2] for k, v in _labelled(ids, lm=False).items()}]
    scores = prune.taylor_scores(model, "heads,ffn", batches)
    assert [s.shape for s in scores["ffn"]] == [(64,), (64,)] and [s.shape for s in scores["heads"]] == [(4,), (4,)]
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if "word_embeddings" not in n)

    ffn, heads = torch.zeros(64), torch.zeros(4)
    layer = model.bert.encoder.layer[1]
    a = layer.attention
    for b in batches:
        model.zero_grad()
        model(**b).loss.backward()
        model.requires_grad_(False)  # the sums below are plain numbers
        w_in, b_in, w_out = layer.intermediate.dense.weight, layer.intermediate.dense.bias, layer.output.dense.weight
        for j in range(64):
            c = (w_in[j] * w_in.grad[j]).sum() + b_in[j] * b_in.grad[j] + (w_out[:, j] * w_out.grad[:, j]).sum()
            ffn[j] += float(c) ** 2
        for h in range(4):
            rows = slice(8 * h, 8 * h + 8)
            c = sum(
                (m.weight[rows] * m.weight.grad[rows]).sum() + (m.bias[rows] * m.bias.grad[rows]).sum()
                for m in (a.self.query, a.self.key, a.self.value)
            )
            c = c + (a.output.dense.weight[:, rows] * a.output.dense.weight.grad[:, rows]).sum()
            heads[h] += float(c) ** 2
        model.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    assert torch.allclose(scores["ffn"][1], ffn, rtol=1e-4, atol=1e-12)
    assert torch.allclose(scores["heads"][1], heads, rtol=1e-4, atol=1e-12)
    assert (scores["ffn"][1] > 0).sum() > 60  # real gradients reach nearly every neuron


def test_taylor_ranking_removes_a_big_head_that_does_nothing(tiny_bert_cls, ids):
    """Head 1 of layer 0 gets large W_q/W_k/W_v rows but no output (its W_o columns are zero):
    weight magnitude keeps it, measured importance (exactly 0) removes it."""
    import torch

    def made():
        model = tiny_bert_cls()
        att = model.bert.encoder.layer[0].attention
        with torch.no_grad():
            for lin in (att.self.query, att.self.key, att.self.value):
                lin.weight[8:16] *= 20
            att.output.dense.weight[:, 8:16].zero_()
        return model

    batches = [_labelled(ids, lm=False)]
    assert float(prune.taylor_scores(made(), "heads", batches)["heads"][0][1]) == 0.0

    def kept_rows(model):  # layer 0's W_q rows that survived, as their norms
        return model.bert.encoder.layer[0].attention.self.query.weight.detach().norm(dim=1)

    big = float(made().bert.encoder.layer[0].attention.self.query.weight[8:16].detach().norm(dim=1).min())
    by_weight, by_data = made(), made()
    assert prune.structured(by_weight, 0.25, "heads")["scores"] == "weight magnitude"
    info = prune.structured(by_data, 0.25, "heads", calibration=batches)
    assert info["scores"] == "first-order Taylor importance on 1 batch" and info["heads_after"] == 3
    assert (kept_rows(by_weight) >= big - 1e-6).sum() == 8  # the big idle head is still there
    assert (kept_rows(by_data) >= big - 1e-6).sum() == 0  # gone


def test_taylor_scores_for_grouped_llama_heads_and_refusal(tiny_llama_lm, ids):
    """Grouped query heads are scored by their W_q rows and W_o columns only (key/value heads
    stay); pruning with calibration keeps one head per group and the model still runs."""
    import torch

    model = tiny_llama_lm()
    batches = [_labelled(ids, lm=True)]
    scores = prune.taylor_scores(model, "heads,ffn", batches)
    assert [s.shape for s in scores["heads"]] == [(4,), (4,)] and scores["ffn"][0].shape == (64,)
    assert all(float(s.min()) > 0 for s in scores["heads"])
    info = prune.structured(model, 0.5, "heads,ffn", calibration=batches)
    assert (info["heads_after"], info["ffn_after"]) == (2, 32)
    for lyr in model.model.layers:
        assert lyr.self_attn.q_proj.weight.shape == (16, 32)
    with torch.inference_mode():
        assert torch.isfinite(model(**ids).logits).all()
    with pytest.raises(UsageError, match="needs at least one batch"):
        prune.taylor_scores(tiny_llama_lm(), "ffn", [])
