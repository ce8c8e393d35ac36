"""torch.compile of tiny models on the CPU: the compiled forward (seq-cls) and the compiled
decode step with a static cache (causal-lm) give the eager model's outputs."""

from __future__ import annotations

import copy

import pytest

from llmos_jupyter.errors import LLMOSError, UsageError
from llmos_jupyter.optimize import compile as comp


def test_compiled_forward_equals_eager_across_lengths(tiny_bert_cls, ids):
    import torch

    eager = tiny_bert_cls()
    model = copy.deepcopy(eager)
    info = comp.compile_model(model, "seq-cls")
    assert info["what"] == "forward" and info["compiler"] and comp.is_compiled(model)
    assert type(model) is type(eager) and model.state_dict().keys() == eager.state_dict().keys()
    short = {k: v[:, :5] for k, v in ids.items()}  # a second length: the graph is reused or recompiled, never wrong
    with torch.inference_mode():
        for batch in (ids, short, ids):
            want, got = eager(**batch).logits, model(**batch).logits
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    with pytest.raises(UsageError, match="already compiled"):
        comp.compile_model(model, "seq-cls")


def test_compiled_decode_step_gives_the_eager_tokens(tiny_llama_lm):
    import torch

    eager = tiny_llama_lm()
    model = copy.deepcopy(eager)
    info = comp.compile_model(model, "causal-lm")
    assert info["what"].startswith("decode step (static cache") and comp.is_compiled(model)
    assert model.generation_config.cache_implementation == "static"
    prompt = torch.tensor([[1, 5, 9, 11, 20]])
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        want = eager.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)
        got = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)
    assert got.tolist() == want.tolist()
    assert getattr(model, "_compiled_call", None) is not None  # transformers compiled the decode step


def test_no_cpp_compiler_is_one_line(monkeypatch, tiny_bert_cls):
    monkeypatch.setattr(comp.shutil, "which", lambda name: None)
    with pytest.raises(LLMOSError, match=r"torch.compile on the cpu needs a C\+\+ compiler .*`apt-get install g\+\+`"):
        comp.compile_model(tiny_bert_cls(), "seq-cls")
