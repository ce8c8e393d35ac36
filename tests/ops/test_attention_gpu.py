"""GPU-only checks of the compiled kernels: native bf16 tensor-core path, large and awkward shapes,
head dims up to 256 (autotune pruning), big grids. Skipped without CUDA or under the interpreter.

Run on a CUDA machine:  .venv/bin/python -m pytest tests/ops -q -m gpu
"""

import pytest
import torch
from attention_reference import attention_math, make_inputs, run_and_check

from llmos_jupyter.ops import attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        attention.INTERPRET or not torch.cuda.is_available(),
        reason="needs CUDA and the compiled Triton kernels (TRITON_INTERPRET unset)",
    ),
]

# (B, H, H_kv, S_q, S_k, D)
LARGE = [
    (2, 16, 4, 1024, 1024, 128),  # Llama-3-8B-like GQA 4:1
    (1, 8, 8, 2047, 2047, 64),  # odd S over many tiles
    (1, 8, 1, 513, 2000, 256),  # MQA, largest head dim, chunk after a cache
    (2, 8, 2, 1, 4096, 128),  # one decode step over a long cache
    (2, 6, 3, 1000, 1000, 96),  # head dim that is not a power of two
    (64, 32, 8, 128, 128, 64),  # big grid: B*H = 2048 programs per tile column
]


@pytest.mark.parametrize("pad", [None, "left"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", LARGE, ids=lambda s: "B{}H{}kv{}q{}k{}D{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_large_shapes_native_dtypes(dtype, shape, causal, pad):
    run_and_check(shape, dtype, causal, pad, "cuda")


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_matches_torch_sdpa_flash(causal):
    # Cross-check against PyTorch's own fused kernel on the tutorial shape (no mask, H = H_kv).
    q, k, v, _ = make_inputs(4, 32, 32, 1024, 1024, 64, torch.bfloat16, "cuda")
    ours = attention.flash_attention(q, k, v, causal=causal)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)
    ref = attention_math(q, k, v, causal=causal, dtype=torch.float32)
    err, err_sdpa = (ours.float() - ref).abs().max().item(), (sdpa.float() - ref).abs().max().item()
    assert err <= 2 * err_sdpa + 1e-2, (err, err_sdpa)


def test_fp32_uses_full_precision_dots():
    run_and_check((2, 8, 2, 300, 300, 64), torch.float32, True, "right", "cuda")
