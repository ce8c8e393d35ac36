"""attn_implementation="llmos_triton" inside transformers: tiny random Llama and BERT models give
the logits of "sdpa" on real tokens (padded and unpadded), the same gradients, the same greedy
tokens with a KV cache, and fall back to SDPA (once, with a notice) where the kernels do not apply.
A left-padded batch must keep its padding mask (an attention function registered alone gets none).
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import (
    AttentionInterface,
    AttentionMaskInterface,
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from llmos_jupyter.ops import attention, registration

VOCAB = 96


def _llama_config():
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _bert_config():
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny random Llama and BERT checkpoints on disk, so tests go through from_pretrained."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(_llama_config()).save_pretrained(root / "llama")
    BertForMaskedLM(_bert_config()).save_pretrained(root / "bert")
    return root


@pytest.fixture
def kernel_calls(monkeypatch):
    """Record every call that reaches the Triton kernels: (S_q, S_k, causal, mask given)."""
    calls = []
    real = attention.flash_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[2], k.shape[2], kw["causal"], kw["attention_mask"] is not None))
        return real(q, k, v, **kw)

    monkeypatch.setattr(attention, "flash_attention", spy)
    monkeypatch.setattr(registration, "_NOTICED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to SDPA would fail the test
        yield calls


def _load(cls, path, impl, device):
    if impl == attention.NAME:
        assert registration.register() == attention.NAME
    return cls.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).to(device).eval()


def _batch(lengths, side, device, seed=1):
    """Random ids with an attention_mask; the real case's batch is ["Hi", "The quick brown fox ..."]:
    lengths (2, 10) after a BOS, padded on ``side``."""
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.zeros(len(lengths), S, dtype=torch.long)
    keep = torch.zeros(len(lengths), S, dtype=torch.long)
    for b, n in enumerate(lengths):
        cols = slice(S - n, S) if side == "left" else slice(0, n)
        ids[b, cols] = torch.randint(3, VOCAB, (n,), generator=g)
        keep[b, cols] = 1
    return ids.to(device), keep.to(device)


def test_register_is_idempotent_and_registers_the_mask_function():
    assert registration.register() == "llmos_triton"
    assert registration.register() == "llmos_triton"
    assert AttentionInterface._global_mapping["llmos_triton"] is registration.llmos_triton_attention_forward
    assert AttentionMaskInterface._global_mapping["llmos_triton"] is sdpa_mask


@pytest.mark.parametrize(
    "side, lengths",
    [("left", (3, 11)), ("right", (3, 11)), (None, (11, 11))],
    ids=["left-padded", "right-padded", "unpadded"],
)
def test_llama_logits_match_sdpa_on_real_tokens(saved, device, side, lengths, kernel_calls):
    ids, keep = _batch(lengths, side or "left", device)
    with torch.no_grad():
        ref = _load(LlamaForCausalLM, saved / "llama", "sdpa", device)(input_ids=ids, attention_mask=keep).logits
        ours = _load(LlamaForCausalLM, saved / "llama", "llmos_triton", device)(
            input_ids=ids, attention_mask=keep
        ).logits
    real = keep.bool()
    err = (ours[real] - ref[real]).abs().max().item()
    assert err < 1e-4, f"max |logit difference| on real tokens = {err:.3g}"
    assert ref[real].abs().max().item() > 0.05  # the comparison is not between near-zero logits
    # one kernel call per layer; padded batches carry their mask, unpadded ones run causal
    assert kernel_calls == [(11, 11, side is None, side is not None)] * 2


def test_without_the_mask_function_the_padding_is_lost(saved, device):
    # The bug this guards against: an attention function registered alone gets attention_mask=None.
    name = "llmos_triton_nomask_test"
    AttentionInterface.register(name, registration.llmos_triton_attention_forward)
    ids, keep = _batch((3, 11), "left", device)
    with torch.no_grad():
        ref = _load(LlamaForCausalLM, saved / "llama", "sdpa", device)(input_ids=ids, attention_mask=keep).logits
        bad = _load(LlamaForCausalLM, saved / "llama", name, device)(input_ids=ids, attention_mask=keep).logits
    real = keep.bool()
    assert (bad[real] - ref[real]).abs().max().item() > 1e-2


def test_llama_generate_with_cache_gives_the_same_tokens(saved, device, kernel_calls):
    ids, keep = _batch((4, 9), "left", device, seed=3)
    kw = dict(input_ids=ids, attention_mask=keep, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = _load(LlamaForCausalLM, saved / "llama", "sdpa", device).generate(**kw)
        ours = _load(LlamaForCausalLM, saved / "llama", "llmos_triton", device).generate(**kw)
    assert ours.shape == (2, 9 + 6)
    assert torch.equal(ours, ref), f"\nsdpa:  {ref.tolist()}\nours:  {ours.tolist()}"
    # prefill (9 queries) then 5 cached decode steps of 1 query against 10..14 keys, 2 layers each
    assert [c[:2] for c in kernel_calls] == [(9, 9)] * 2 + [(1, n) for n in range(10, 15) for _ in range(2)]


def test_llama_training_gradients_match_sdpa(saved, device, kernel_calls):
    ids, keep = _batch((5, 11), "left", device, seed=4)
    labels = ids.masked_fill(keep == 0, -100)
    grads = {}
    for impl in ("sdpa", "llmos_triton"):
        model = _load(LlamaForCausalLM, saved / "llama", impl, device).train()
        model(input_ids=ids, attention_mask=keep, labels=labels).loss.backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["sdpa"].keys() == grads["llmos_triton"].keys()
    for name, g in grads["sdpa"].items():
        torch.testing.assert_close(grads["llmos_triton"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    assert len(kernel_calls) == 2


@pytest.mark.parametrize("side", ["right", "left", None])
def test_bert_logits_match_sdpa_on_real_tokens(saved, device, side, kernel_calls):
    ids, keep = _batch((4, 13) if side else (13, 13), side or "right", device, seed=2)
    with torch.no_grad():
        ref = _load(BertForMaskedLM, saved / "bert", "sdpa", device)(input_ids=ids, attention_mask=keep).logits
        ours = _load(BertForMaskedLM, saved / "bert", "llmos_triton", device)(input_ids=ids, attention_mask=keep).logits
    real = keep.bool()
    err = (ours[real] - ref[real]).abs().max().item()
    assert err < 1e-4, f"max |logit difference| on real tokens = {err:.3g}"
    assert kernel_calls == [(13, 13, False, side is not None)] * 2  # bidirectional, mask iff padded


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def _qkv(device, S_q=9, S_k=9, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, S_q, 16, generator=g).to(device, dtype)
    k = torch.randn(2, 2, S_k, 16, generator=g).to(device, dtype)
    v = torch.randn(2, 2, S_k, 16, generator=g).to(device, dtype)
    return q, k, v


def test_static_cache_prefill_without_mask_matches_sdpa(device):
    # sdpa_mask returns None for prefill into an empty static cache: keys beyond S_q are empty
    # slots and causality is top-left there. The function must cut them, as SDPA's does.
    q, k, v = _qkv(device, S_q=9, S_k=16)
    k[:, :, 9:] = 0
    v[:, :, 9:] = 0
    ours, _ = registration.llmos_triton_attention_forward(_Module(), q, k, v, None, scaling=0.25)
    ref, _ = sdpa_attention_forward(_Module(), q, k, v, None, scaling=0.25)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(dropout=0.1), "dropout"),
        (dict(softcap=30.0), "softcapping"),
        (dict(sliding_window=4), "sliding-window"),
    ],
)
def test_unsupported_features_fall_back_to_sdpa_with_one_notice(device, kwargs, reason, monkeypatch):
    monkeypatch.setattr(registration, "_NOTICED", set())
    q, k, v = _qkv(device)
    sdpa_kwargs = {key: val for key, val in kwargs.items() if key != "softcap"}
    torch.manual_seed(0)
    ref = None if "softcap" in kwargs else sdpa_attention_forward(_Module(), q, k, v, None, **sdpa_kwargs)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            torch.manual_seed(0)
            try:
                out, _ = registration.llmos_triton_attention_forward(_Module(), q, k, v, None, **kwargs)
            except ValueError as exc:  # SDPA itself refuses softcap: the fallback really ran SDPA
                assert "softcap" in str(exc)
                out = None
    notices = [w for w in caught if "llmos_triton attention" in str(w.message)]
    assert len(notices) == 1 and reason in str(notices[0].message)
    if ref is not None:
        torch.testing.assert_close(out, ref)


def test_additive_float_mask_and_use_triton_false_fall_back(device, monkeypatch):
    monkeypatch.setattr(registration, "_NOTICED", set())
    q, k, v = _qkv(device)
    float_mask = torch.zeros(2, 1, 9, 9, device=device)
    float_mask[0, ..., :3] = float("-inf")
    with pytest.warns(RuntimeWarning, match="boolean masks"):
        out, _ = registration.llmos_triton_attention_forward(_Module(), q, k, v, float_mask)
    torch.testing.assert_close(out, sdpa_attention_forward(_Module(), q, k, v, float_mask)[0])

    monkeypatch.setattr(attention, "USE_TRITON", False)
    with pytest.warns(RuntimeWarning, match="USE_TRITON = False"):
        out, _ = registration.llmos_triton_attention_forward(_Module(), q, k, v, None)
    torch.testing.assert_close(out, sdpa_attention_forward(_Module(), q, k, v, None)[0])


def test_without_gpu_or_interpreter_the_model_falls_back_to_sdpa_with_a_notice():
    # A fresh process with CPU tensors and no TRITON_INTERPRET: the kernels cannot run there
    # (no CUDA, or CUDA but CPU tensors), so llmos_triton must behave exactly like sdpa and say so once.
    code = """
import warnings, torch
from transformers import LlamaConfig, LlamaForCausalLM
from llmos_jupyter.ops import attention, registration
registration.register()
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16)
model = LlamaForCausalLM(cfg).eval()
ids = torch.randint(3, 50, (2, 7)); keep = torch.ones(2, 7, dtype=torch.long); keep[0, :3] = 0
with warnings.catch_warnings(record=True) as caught, torch.no_grad():
    warnings.simplefilter("always")
    model.set_attn_implementation("llmos_triton")
    ours = model(input_ids=ids, attention_mask=keep).logits
    model.set_attn_implementation("sdpa")
    ref = model(input_ids=ids, attention_mask=keep).logits
notices = [str(w.message) for w in caught if "llmos_triton attention" in str(w.message)]
assert len(notices) == 1, notices
assert torch.equal(ours, ref)
print(notices[0])
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "using PyTorch SDPA instead" in res.stdout
    assert ("no CUDA device" in res.stdout) or ("tensors are on cpu" in res.stdout)
