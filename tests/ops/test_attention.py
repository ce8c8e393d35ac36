"""The Triton attention kernels against an fp32 PyTorch reference (outputs and gradients).

On a CPU these run the real kernels in Triton's interpreter (conftest sets TRITON_INTERPRET=1);
with CUDA they run compiled on the GPU. Shapes are kept small for the interpreter.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_reference import DTYPE_ATOL, attention_math, make_inputs, run_and_check

from llmos_jupyter.errors import UsageError
from llmos_jupyter.ops import attention
from llmos_jupyter.ops.attention import flash_attention

# (B, H, H_kv, S_q, S_k, D): S = 1, 17, 77, 128; D = 16, 64; H/H_kv = 4/4, 4/2, 4/1; plus a
# decode step (S_q = 1 after a cache), a prefill chunk after a cache (17 after 60), and more
# queries than keys (causal rows with no key).
SHAPES = [
    (2, 4, 4, 1, 1, 16),
    (2, 4, 2, 17, 17, 64),
    (2, 4, 1, 77, 77, 16),
    (1, 4, 2, 128, 128, 64),
    (2, 4, 4, 128, 128, 16),
    (2, 4, 1, 1, 77, 64),
    (2, 4, 2, 17, 77, 16),
    (2, 4, 4, 77, 17, 16),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("pad", [None, "left", "right"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}kv{}q{}k{}D{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_forward_backward_matches_reference(dtype, shape, causal, pad, device):
    run_and_check(shape, dtype, causal, pad, device)


def test_custom_scale_and_odd_head_dim(device):
    # D = 40 is not a power of two (tile 64, masked columns); scale is the caller's, not 1/sqrt(D).
    run_and_check((2, 4, 2, 33, 33, 40), torch.float32, True, "left", device, scale=0.3)


def test_strided_kv_from_a_larger_cache(device):
    # k/v as slices of a bigger preallocated cache (non-contiguous along S), q a transposed view.
    B, H, H_kv, S, D = 2, 4, 2, 21, 16
    q, _, _, do = make_inputs(B, H, H_kv, S, S, D, torch.float32, device)
    cache = torch.randn(2, B, H_kv, 64, D, device=device)
    k, v = cache[0, :, :, 5 : 5 + S], cache[1, :, :, 5 : 5 + S]
    assert not k.is_contiguous() and not q.is_contiguous()
    out = flash_attention(q, k, v, causal=True)
    ref = attention_math(q, k, v, causal=True, dtype=torch.float32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_rows_without_keys_give_zeros_and_zero_grads(device):
    B, H, S, D = 2, 4, 17, 16
    q, k, v, do = make_inputs(B, H, H, S, S, D, torch.float16, device)
    mask = torch.ones(B, 1, S, S, dtype=torch.bool, device=device)
    mask[1, :, 3:9] = False  # queries 3..8 of row 1 see nothing
    mask[0] = False  # row 0 sees nothing at all
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out = flash_attention(q, k, v, attention_mask=mask)
    out.backward(do)
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert out[0].abs().max().item() == 0.0 and out[1, 3:9].abs().max().item() == 0.0
    assert q.grad[0].abs().max().item() == 0.0 and k.grad[0].abs().max().item() == 0.0
    assert out[1, 9:].abs().max().item() > 0.1  # the other rows are real attention


def test_causal_is_bottom_right_so_a_kv_cache_step_matches_full_attention(device):
    # Running the last 5 queries against all 40 keys == the last 5 rows of full causal attention.
    B, H, H_kv, S, D = 2, 4, 2, 40, 16
    q, k, v, _ = make_inputs(B, H, H_kv, S, S, D, torch.float32, device)
    full = flash_attention(q, k, v, causal=True)
    step = flash_attention(q[:, :, -5:], k, v, causal=True)
    torch.testing.assert_close(step, full[:, -5:], atol=1e-6, rtol=1e-5)


def test_two_d_and_head_broadcast_masks_equal_the_four_d_mask(device):
    B, H, S, D = 2, 4, 17, 16
    q, k, v, _ = make_inputs(B, H, H, S, S, D, torch.float32, device)
    keep = torch.ones(B, S, dtype=torch.bool, device=device)
    keep[1, :6] = False
    a = flash_attention(q, k, v, attention_mask=keep)
    b = flash_attention(q, k, v, attention_mask=keep[:, None, None, :].expand(B, 1, S, S))
    c = flash_attention(q, k, v, attention_mask=keep[:, None, None, :].expand(B, H, S, S).contiguous())
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(q=(2, 4, 8, 8), k=(2, 2, 8, 8), v=(2, 2, 8, 8)), "head dim 8"),
        (dict(k=(2, 3, 8, 16), v=(2, 3, 8, 16)), "multiple of num_key_value_heads"),
        (dict(v=(2, 2, 9, 16)), "k and v"),
        (dict(q=(4, 8, 16)), "4-D"),
        (dict(mask=torch.zeros(2, 1, 8, 8)), "boolean"),
        (dict(mask=torch.ones(3, 1, 8, 8, dtype=torch.bool)), "does not broadcast"),
        (dict(kdtype=torch.float16), "one dtype"),
    ],
)
def test_bad_inputs_raise_usage_error(bad, match, device):
    q = torch.randn(*bad.get("q", (2, 4, 8, 16)), device=device)
    k = torch.randn(*bad.get("k", (2, 2, 8, 16)), device=device).to(bad.get("kdtype", torch.float32))
    v = torch.randn(*bad.get("v", (2, 2, 8, 16)), device=device)
    mask = bad.get("mask")
    with pytest.raises(UsageError, match=match):
        flash_attention(q, k, v, attention_mask=None if mask is None else mask.to(device))


def test_is_available_and_pinned_config_under_the_interpreter():
    ok, why = attention.is_available()
    assert ok, why
    if attention.INTERPRET:
        assert "interpreter" in why
        for kernel in (attention._attn_fwd_kernel, attention._attn_bwd_dkdv_kernel, attention._attn_bwd_dq_kernel):
            assert len(kernel.configs) == 1  # multi-config autotune fails in the interpreter
    else:
        assert "CUDA" in why


def test_gpu_config_space_is_pruned_for_large_head_dims():
    import triton

    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in attention._FWD_SPACE
    ]
    prune = attention._prune(lambda c: c.kwargs["BLOCK_M"])
    kept_256 = prune(configs, {}, BLOCK_D=256)
    kept_64 = prune(configs, {}, BLOCK_D=64)
    assert 0 < len(kept_256) < len(kept_64) == len(configs)
    assert all(c.kwargs["BLOCK_M"] * 256 / (32 * c.num_warps) <= 128 for c in kept_256)
    assert attention._bucket(1) == 16 and attention._bucket(77) == 128 and attention._bucket(128) == 128


def test_importing_the_package_does_not_import_torch_or_triton():
    code = (
        "import sys, llmos_jupyter.ops as ops; "
        "assert 'torch' not in sys.modules and 'triton' not in sys.modules, 'heavy import'; "
        "print(ops.__all__)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0, res.stderr
    assert "flash_attention" in res.stdout


def test_dtype_table_covers_every_supported_dtype():
    assert set(DTYPE_ATOL) == set(attention.SUPPORTED_DTYPES) == set(DTYPES)
