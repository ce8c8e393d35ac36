"""Reference attention and the FlashAttention error rule, shared by the tests in tests/ops.

The rule (FlashAttention-2's test suite): with ``ref`` the fp32 attention of the same (rounded)
inputs and ``torch_same`` PyTorch's own attention computed in the test dtype, the kernel passes if

    max|ours - ref| <= 2 * max|torch_same - ref| + DTYPE_ATOL[dtype] * max(1, max|ref|)

for the output and for each of dq, dk, dv.
"""

from __future__ import annotations

import torch

# atol per dtype, relative to the tensor's scale: atol = DTYPE_ATOL[dtype] * max(1, max|ref|).
# For fp16/bf16 it is the machine epsilon, i.e. one unit in the last place of the largest value:
# the rounding of the stored result alone can cost half of it (bf16 dV of 128 keys reaches ~10,
# where one ulp is 0.06). For fp32, 1e-5 absorbs summation-order differences.
DTYPE_ATOL = {
    torch.float32: 1e-5,
    torch.float16: torch.finfo(torch.float16).eps,  # 2**-10
    torch.bfloat16: torch.finfo(torch.bfloat16).eps,  # 2**-7
}

WORST: dict[str, dict] = {}  # dtype name -> worst case seen, printed by conftest at the end


def valid_mask(B, H, S_q, S_k, causal: bool, mask: torch.Tensor | None, device) -> torch.Tensor:
    """(B, H, S_q, S_k) booleans: True where query i may attend key j (bottom-right causal)."""
    valid = torch.ones(B, H, S_q, S_k, dtype=torch.bool, device=device)
    if causal:
        valid &= torch.ones(S_q, S_k, dtype=torch.bool, device=device).tril(S_k - S_q)
    if mask is not None:
        valid &= mask.to(device)
    return valid


def attention_math(q, k, v, *, causal=False, mask=None, scale=None, dtype=None):
    """Eager attention computed in ``dtype`` (default: q's dtype). q (B, H, S_q, D),
    k/v (B, H_kv, S_k, D) -> (B, S_q, H, D). Rows with no valid key are zeros (as the kernel)."""
    dtype = dtype or q.dtype
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    k = k.repeat_interleave(H // H_kv, dim=1)  # GQA: autograd sums the group's gradients
    v = v.repeat_interleave(H // H_kv, dim=1)
    valid = valid_mask(B, H, S_q, S_k, causal, mask, q.device)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~valid, torch.finfo(dtype).min)
    p = torch.softmax(s, dim=-1) * valid  # an all-masked row would be uniform: zero it
    return (p @ v).transpose(1, 2)


def padding_mask(B, S_q, S_k, side: str | None, device="cpu") -> torch.Tensor | None:
    """Boolean (B, 1, S_q, S_k) key-padding mask: row b has ``b * S_k // 3`` padded keys on
    ``side`` ('left' or 'right'); None for no padding. Row 0 is unpadded, the last row the most."""
    if side is None:
        return None
    keep = torch.ones(B, S_k, dtype=torch.bool, device=device)
    for b in range(B):
        n_pad = (b * S_k) // 3 if B > 1 else S_k // 3
        if n_pad:
            if side == "left":
                keep[b, :n_pad] = False
            else:
                keep[b, S_k - n_pad :] = False
    return keep[:, None, None, :].expand(B, 1, S_q, S_k)


def worst_element(ours: torch.Tensor, ref: torch.Tensor) -> str:
    diff = (ours.float() - ref.float()).abs()
    idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    return f"at {idx}: ours {ours[idx].item():.6g}, ref {ref[idx].item():.6g}"


def check_rule(name: str, ours: torch.Tensor, torch_same: torch.Tensor, ref: torch.Tensor, dtype, case: str):
    """Assert the FlashAttention rule for one tensor and record the margin in WORST."""
    atol = DTYPE_ATOL[dtype] * max(1.0, ref.abs().max().item())
    assert torch.isfinite(ours).all(), f"{case} {name}: non-finite values"
    err = (ours.float() - ref.float()).abs().max().item()
    err_torch = (torch_same.float() - ref.float()).abs().max().item()
    bound = 2 * err_torch + atol
    key = str(dtype).replace("torch.", "")
    w = WORST.setdefault(key, {"ratio": -1.0})
    if err / bound > w["ratio"]:
        w.update(ratio=err / bound, err=err, err_torch=err_torch, atol=atol, what=f"{case} {name}")
    assert err <= bound, (
        f"{case} {name}: max err {err:.3g} > 2 x torch {err_torch:.3g} + {atol:g}; worst {worst_element(ours, ref)}"
    )


def make_inputs(B, H, H_kv, S_q, S_k, D, dtype, device, seed=0):
    """Random q, k, v, dO. q as transformers passes it: a (B, S, H, D) projection viewed as (B, H, S, D), not copied."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S_q, H, D, generator=g).transpose(1, 2)
    k = torch.randn(B, H_kv, S_k, D, generator=g)
    v = torch.randn(B, H_kv, S_k, D, generator=g)
    do = torch.randn(B, S_q, H, D, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, do)]


def run_and_check(shape, dtype, causal, pad, device, scale=None):
    """Run flash_attention forward and backward on ``shape`` = (B, H, H_kv, S_q, S_k, D) and
    check output, dq, dk, dv against the fp32 reference with the rule above."""
    from llmos_jupyter.ops.attention import flash_attention

    B, H, H_kv, S_q, S_k, D = shape
    q, k, v, do = make_inputs(*shape, dtype, device)
    mask = padding_mask(B, S_q, S_k, pad, device)
    case = f"[{dtype} B{B} H{H}/{H_kv} S{S_q}x{S_k} D{D} causal={causal} pad={pad}]"

    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, causal=causal, attention_mask=mask, scale=scale)
    assert out.shape == (B, S_q, H, D) and out.dtype == dtype
    out.backward(do)

    ref_leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = attention_math(*ref_leaves, causal=causal, mask=mask, scale=scale, dtype=torch.float32)
    ref.backward(do.float())

    same_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    same = attention_math(*same_leaves, causal=causal, mask=mask, scale=scale)
    same.backward(do)

    check_rule("out", out, same, ref, dtype, case)
    for name, a, s, r in zip(("dq", "dk", "dv"), leaves, same_leaves, ref_leaves):
        assert a.grad.shape == a.shape
        check_rule(name, a.grad, s.grad, r.grad, dtype, case)
