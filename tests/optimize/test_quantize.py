"""Quantisation of tiny models: int8 module types, outputs near fp32, bytes, levels per device,
int8 of int8 refused, save/load with plain torch + transformers."""

from __future__ import annotations

import json

import pytest

from llmos_jupyter.errors import UsageError
from llmos_jupyter.optimize import quantize as q


def _linears(model):
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_int8_swaps_every_linear_and_stays_close(tiny_bert_cls, ids):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    from llmos_jupyter.optimize.measure import linear_bytes
    from llmos_jupyter.resources.memory import count_params, module_bytes

    ref, model = tiny_bert_cls(), tiny_bert_cls()
    names = _linears(model)
    fp32_linear, fp32_params = linear_bytes(model), count_params(model)
    info = q.quantize(model, "int8")
    assert info["level"] == "int8" and "quantize_dynamic" in info["backend"]
    mods = dict(model.named_modules())
    assert names and all(type(mods[n]) is DynLinear for n in names), [type(mods[n]) for n in names]
    assert not _linears(model)  # no float nn.Linear left
    w, _ = mods[names[0]]._packed_params._weight_bias()
    assert w.dtype == torch.qint8 and w.qscheme() == torch.per_channel_affine
    assert q.current(model) == "int8"
    # int8 weights: 1 byte each + float64 scale and int64 zero point per output row
    rows = sum(mods[n]._packed_params._weight_bias()[0].shape[0] for n in names)
    assert linear_bytes(model) == fp32_linear // 4 + rows * 16
    assert count_params(model) == fp32_params  # the weights are all still there, as int8
    assert sum(module_bytes(model).values()) < sum(module_bytes(ref).values())
    with torch.inference_mode():
        a, b = ref(**ids).logits, model(**ids).logits  # (3, 2)
    assert (a - b).abs().max().item() < 0.05, (a, b)


def test_bf16_casts_every_float_tensor(tiny_llama_lm, ids):
    import torch

    model = tiny_llama_lm()
    q.quantize(model, "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert q.current(model) == "bf16"


@pytest.mark.parametrize(
    "level, message",
    [
        ("int3", "unknown quantisation level 'int3'; use one of int8, int8-weight, int4, bf16, fp16"),
        ("int4", "--quantize int4 is not available on cpu: int4 weight-only runs on CUDA GPUs only"),
        ("fp16", "--quantize fp16 is not available on cpu: fp16 has no fast matrix multiply on CPUs"),
    ],
)
def test_levels_this_cpu_does_not_run_are_one_line(level, message):
    with pytest.raises(UsageError) as e:
        q.check(level, "cpu")
    assert str(e.value).startswith(message), str(e.value)
    assert "available on this cpu: int8" in str(e.value) and "\n" not in str(e.value)


def test_int8_weight_needs_torchao_or_uses_it(tiny_bert_cls, ids):
    """int8-weight is torchao's: without torchao (CI, the default install) one line names the
    extra; with it, the weights become torchao's int8 tensors."""
    model = tiny_bert_cls()
    if not q.torchao_installed():
        with pytest.raises(UsageError) as e:
            q.quantize(model, "int8-weight")
        assert "needs torchao, which is not installed: `pip install 'llmos-jupyter[optimize]'`" in str(e.value)
        assert "available without it on this cpu: int8, bf16" in str(e.value)
        assert q.supported("cpu").keys() == {"int8", "bf16"}
        return
    import torch

    ref = tiny_bert_cls()
    q.quantize(model, "int8-weight")
    assert q.current(model) == "torchao"
    with torch.inference_mode():
        assert (ref(**ids).logits - model(**ids).logits).abs().max().item() < 0.05


def test_int8_of_int8_is_refused(tiny_bert_cls):
    model = tiny_bert_cls()
    q.quantize(model, "int8")
    with pytest.raises(UsageError, match=r"already quantised \(int8\)"):
        q.quantize(model, "int8")


def test_saved_int8_reloads_with_plain_torch_and_transformers(tiny_bert_cls, ids, tmp_path):
    """The export format: config + torch.save'd int8 state dict; rebuilt by the recipe written
    next to it (executed here as written) and by load_quantized, both giving the same logits."""
    import torch

    model = tiny_bert_cls()
    q.quantize(model, "int8")
    files = q.save_quantized(model, tmp_path, level="int8", task_class="AutoModelForSequenceClassification")
    assert sorted(files) == sorted(p.name for p in tmp_path.iterdir())
    recipe = json.loads((tmp_path / q.RECIPE_FILE).read_text())
    scope = {"FOLDER": str(tmp_path)}
    exec("\n".join(recipe["load"]), scope)  # the lines a user copies: plain torch + transformers
    plain = scope["model"].eval()
    again = q.load_quantized(tmp_path)
    with torch.inference_mode():
        want = model(**ids).logits
        assert torch.equal(plain(**ids).logits, want)
        assert torch.equal(again(**ids).logits, want)
