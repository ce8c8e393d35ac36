"""The CUDA levels of ``%llm optimize``: bf16 / fp16 casts and torchao's int8 / int8-weight / int4
configs on a tiny model, close to float32, plus the compiled forward on the GPU. Skipped without
CUDA (these are the checks a machine with a GPU runs); torchao's levels also need torchao.

Run on a CUDA machine:  .venv/bin/python -m pytest tests/optimize -q -m gpu
"""

from __future__ import annotations

import copy

import pytest
import torch

from llmos_jupyter.optimize import compile as comp
from llmos_jupyter.optimize import quantize as q

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _on_gpu(make):
    model = make(hidden_size=256, intermediate_size=512, num_attention_heads=4).to("cuda")  # int4 groups of 128
    return model


@pytest.mark.parametrize(
    "level, atol", [("bf16", 0.05), ("fp16", 0.02), ("int8", 0.1), ("int8-weight", 0.05), ("int4", 0.3)]
)
def test_cuda_levels_stay_close_to_fp32(level, atol, tiny_bert_cls, ids):
    if level not in q.supported("cuda:0"):
        pytest.skip(f"{level} is not available here: {q.supported('cuda:0')}")  # torchao absent, or int4 before sm80
    ref = _on_gpu(tiny_bert_cls)
    model = copy.deepcopy(ref)
    info = q.quantize(model, level)
    assert info["device"] == "cuda:0"
    batch = {k: v.to("cuda") for k, v in ids.items()}
    with torch.inference_mode():
        want, got = ref(**batch).logits.float(), model(**batch).logits.float()
    assert (got - want).abs().max().item() < atol, (level, (got - want).abs().max().item())
    assert q.current(model) is not None


def test_compiled_forward_on_the_gpu(tiny_bert_cls, ids):
    ref = _on_gpu(tiny_bert_cls)
    model = copy.deepcopy(ref)
    comp.compile_model(model, "seq-cls")
    batch = {k: v.to("cuda") for k, v in ids.items()}
    with torch.inference_mode():
        assert torch.allclose(model(**batch).logits, ref(**batch).logits, atol=1e-4, rtol=1e-3)
