"""Fused attention in Triton: FlashAttention-2 forward and backward for transformers' layouts.

What it computes, for every batch ``b`` and query head ``h`` (key/value head ``h // (H / H_kv)``):

    O[b, i, h] = sum_j softmax_j(scale * q_i . k_j  over valid j) * v_j

with the FlashAttention-2 algorithm (Tri Dao, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning", 2023, arXiv:2307.08691): one program per tile of ``BLOCK_M``
queries walks the keys in tiles of ``BLOCK_N`` with an online softmax (running max ``m``, running
sum ``l``, rescaled accumulator), stores ``O`` and the log-sum-exp, and the backward recomputes the
probabilities from the log-sum-exp instead of storing the ``S_q x S_k`` matrix. Past Triton's
fused-attention tutorial it handles grouped-query heads, bottom-right causal alignment (decoding
with a KV cache), boolean padding masks, any sequence length, head dims 16-256 and fp32/fp16/bf16,
reading q, k, v through their strides (no copies).

Layout of this file (Liger-Kernel style): tuning constants, private ``@triton.jit`` kernels,
launchers that check shapes and pick the grid, the ``torch.autograd.Function``, then the public
:func:`flash_attention`, :func:`is_available` and :func:`register`.

Running it without a GPU: set ``TRITON_INTERPRET=1`` in the environment *before* this module is
imported; Triton then runs the same kernels in numpy on the CPU (slowly). In that mode bf16
``tl.dot`` is wrong and fp32 -> bf16 truncates, so bf16 tiles are upcast to fp32 inside the
kernels and torch rounds the fp32 results; autotuning is pinned to one config.
Tests: ``.venv/bin/python -m pytest tests/ops -q``; speed:
``python benchmarks/benchmark_attention.py`` on a CUDA machine.
"""

from __future__ import annotations

import inspect
import math
import os

import torch

from llmos_jupyter.errors import UsageError

try:
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR = ""
except ImportError as exc:  # no Triton wheel for this platform: is_available() says so, callers fall back

    class _NoTriton:
        """Just enough of ``triton`` for the decorators below to run; nothing here can launch."""

        Config = staticmethod(lambda *args, **kwargs: None)
        jit = staticmethod(lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f))
        autotune = staticmethod(lambda *args, **kwargs: lambda f: f)

    triton, tl = _NoTriton(), None
    _TRITON_IMPORT_ERROR = f"Triton is not installed ({exc})"

__all__ = ["FlashAttentionFunction", "flash_attention", "is_available", "NAME", "USE_TRITON"]

NAME = "llmos_triton"  # the attn_implementation name in transformers

# Read once, when the kernels below are decorated: triton.jit picks interpreter or compiler then.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1" and not _TRITON_IMPORT_ERROR

# One override that tests and debugging can flip: None decides from is_available(); False sends
# every call from transformers to PyTorch SDPA (flash_attention itself always runs the kernels).
USE_TRITON: bool | None = None

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256  # tl.dot needs >= 16; 256 is the largest tile that fits SRAM
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634  # softmax in base 2: exp(x) = exp2(x * log2(e)), exp2 is one MUFU op

# fp32 inputs: full-precision dot ("ieee"), so fp32 attention is as exact as PyTorch's fp32 SDPA.
# fp16/bf16 ignore this and use tensor cores with fp32 accumulation.
FP32_DOT_PRECISION = "ieee"

# ---------------------------------------------------------------------------------------------
# Tuning. Autotune keys: power-of-two buckets of S_q and S_k (so decoding, where S_k grows by one
# each step, re-tunes only at 2^n), head dim, causal, mask. The GPU space follows the Hopper
# configs of Triton's fused-attention tutorial (BLOCK_M 64/128, BLOCK_N 32-128, 4/8 warps,
# 2-4 stages); it has NOT been measured on an H200 in this repo yet: run
# benchmarks/benchmark_attention.py and record the winning configs here.
# Under the interpreter a single pinned config (multi-config autotune fails there); 32x32 tiles
# make S = 77 and 128 span several tiles, so the partial-tile and diagonal paths run in tests.
# ---------------------------------------------------------------------------------------------
_INTERPRET_CONFIG = dict(BLOCK_M=32, BLOCK_N=32)

_FWD_SPACE = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages); the last one always survives pruning
    (128, 128, 8, 3),
    (128, 64, 8, 3),
    (128, 64, 4, 3),
    (64, 64, 4, 3),
    (64, 32, 4, 2),
]
_BWD_DKDV_SPACE = [(64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 4, 3), (32, 32, 4, 2)]
_BWD_DQ_SPACE = [(128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2)]
# Compile cost (sm_90 cross-compile on a 2-core CPU): 1-18 s per config, so a new
# (dtype, D, causal, mask) costs ~1 min on first use; Triton's disk cache makes later runs fast.
_MAX_ACC_REGS = 128  # prune configs whose fp32 accumulators need > 128 registers/thread (spills)


def _configs(space):
    if INTERPRET:
        return [triton.Config(dict(_INTERPRET_CONFIG), num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in space]


def _prune(rows_of):
    """Keep configs whose fp32 accumulator tile fits in registers: rows_of(cfg) rows x BLOCK_D."""

    def prune(configs, named_args, **kwargs):
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
        kept = [c for c in configs if rows_of(c) * block_d / (32 * c.num_warps) <= _MAX_ACC_REGS]
        return kept or configs[-1:]

    return prune


_AUTOTUNE_KEY = ["S_Q_KEY", "S_K_KEY", "HEAD_DIM", "CAUSAL", "HAS_MASK"]


def _tune_bench(kernel_call, quantiles):
    """Shorter timing than Triton's default (25 ms warm-up, 100 ms) per config: tuning a new key
    costs ~17 configs x ~40 ms, which keeps the benchmark script's first run within minutes."""
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


_TUNE_KW = {}
if not INTERPRET and not _TRITON_IMPORT_ERROR and "do_bench" in inspect.signature(triton.autotune).parameters:
    _TUNE_KW["do_bench"] = _tune_bench  # Triton >= 3.2; older ones keep their default timing


def _bucket(n: int) -> int:
    return max(16, 1 << max(0, int(n) - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# Kernels. Conventions: q/k/v/o pointers are pre-offset to one (batch, head); scores are kept in
# log2 units (qk_scale = scale * log2(e)); "valid" = inside S_q/S_k, causal and padding mask.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _valid_tile(offs_m, offs_n, S_Q, S_K, Mask, stride_mm, stride_mn, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """(BLOCK_M, BLOCK_N) booleans: may query i attend to key j? Causal is bottom-right aligned."""
    valid = (offs_m[:, None] < S_Q) & (offs_n[None, :] < S_K)
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + (S_K - S_Q))
    if HAS_MASK:
        rows = offs_m[:, None].to(tl.int64) * stride_mm  # S_q * S_k can pass 2**31 at long context
        keep = tl.load(Mask + rows + offs_n[None, :] * stride_mn, mask=valid, other=0)
        valid = valid & (keep != 0)
    return valid


@triton.jit
def _attn_fwd_tiles(
    acc,
    l_i,
    m_i,
    q,
    K,
    V,
    Mask,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_mm,
    stride_mn,
    offs_m,
    offs_d,
    S_Q,
    S_K,
    qk_scale,
    lo,
    hi,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online softmax over key tiles [lo, hi) (FlashAttention-2, Algorithm 1, lines 6-11)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_in = (offs_n[:, None] < S_K) & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_in, other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_in, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        valid = _valid_tile(offs_m, offs_n, S_Q, S_K, Mask, stride_mm, stride_mn, CAUSAL, HAS_MASK)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no valid key yet: no NaN
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(
    configs=_configs(_FWD_SPACE),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune(lambda c: c.kwargs["BLOCK_M"])},
    **_TUNE_KW,
)
@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    Mask,
    Out,
    Lse,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    H,
    GROUP,
    S_Q,
    S_K,
    qk_scale,
    S_Q_KEY,
    S_K_KEY,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid (cdiv(S_q, BLOCK_M), H, B). Writes O (B, S_q, H, D) and Lse (B, H, S_q) in log2 units."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    kv_h = h // GROUP  # grouped-query attention: GROUP query heads share one key/value head
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + kv_h * stride_kh
    V += b * stride_vb + kv_h * stride_vh
    Out += b * stride_ob + h * stride_oh
    if HAS_MASK:
        Mask += b * stride_mb + h * stride_mh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_in = (offs_m[:, None] < S_Q) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_in, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        # Query i sees keys j <= i + (S_k - S_q). Tiles left of the block's first row's limit need
        # no causal test; the band up to its last row's limit does; tiles beyond it are skipped.
        first = pid_m * BLOCK_M + (S_K - S_Q)
        full_hi = tl.minimum(S_K, tl.maximum(0, first + 1)) // BLOCK_N * BLOCK_N
        hi = tl.minimum(S_K, tl.maximum(0, first + BLOCK_M))
        acc, l_i, m_i = _attn_fwd_tiles(
            acc,
            l_i,
            m_i,
            q,
            K,
            V,
            Mask,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_mm,
            stride_mn,
            offs_m,
            offs_d,
            S_Q,
            S_K,
            qk_scale,
            0,
            full_hi,
            HEAD_DIM,
            BLOCK_N,
            False,
            HAS_MASK,
            UPCAST,
            DOT_PRECISION,
        )
        acc, l_i, m_i = _attn_fwd_tiles(
            acc,
            l_i,
            m_i,
            q,
            K,
            V,
            Mask,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_mm,
            stride_mn,
            offs_m,
            offs_d,
            S_Q,
            S_K,
            qk_scale,
            full_hi,
            hi,
            HEAD_DIM,
            BLOCK_N,
            True,
            HAS_MASK,
            UPCAST,
            DOT_PRECISION,
        )
    else:
        acc, l_i, m_i = _attn_fwd_tiles(
            acc,
            l_i,
            m_i,
            q,
            K,
            V,
            Mask,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_mm,
            stride_mn,
            offs_m,
            offs_d,
            S_Q,
            S_K,
            qk_scale,
            0,
            S_K,
            HEAD_DIM,
            BLOCK_N,
            False,
            HAS_MASK,
            UPCAST,
            DOT_PRECISION,
        )

    empty = l_i == 0.0  # no valid key (all padding, or above the causal diagonal): output 0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, 0.0, m_i + tl.log2(l_safe))
    tl.store(Lse + (b * H + h) * S_Q + offs_m, lse, mask=offs_m < S_Q)
    tl.store(Out + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, out.to(Out.dtype.element_ty), mask=q_in)


@triton.jit
def _attn_bwd_preprocess_kernel(
    Out,
    dOut,
    Delta,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    H,
    S_Q,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Delta_i = rowsum(dO_i * O_i) (FlashAttention-2, Algorithm 2, line 4). Grid (cdiv(S_q, BLOCK_M), H, B)."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    inside = (offs_m[:, None] < S_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(
        Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        mask=inside,
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        dOut + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=inside,
        other=0.0,
    ).to(tl.float32)
    tl.store(Delta + (b * H + h) * S_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < S_Q)


@triton.autotune(
    configs=_configs(_BWD_DKDV_SPACE),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune(lambda c: 2 * c.kwargs["BLOCK_N"])},
    **_TUNE_KW,
)
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    Mask,
    dOut,
    Lse,
    Delta,
    dK,
    dV,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dkd,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_dvd,
    H,
    GROUP,
    S_Q,
    S_K,
    qk_scale,
    sm_scale,
    S_Q_KEY,
    S_K_KEY,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dK, dV for one tile of keys of one key/value head, summed over its GROUP query heads.

    Grid (cdiv(S_k, BLOCK_N), H_kv, B); FlashAttention-2, Algorithm 2 (outer loop over key tiles):
    dV += P^T dO, dS = P * (dO V^T - Delta), dK += scale * dS^T Q. No atomics: the program owns the
    whole group, so GQA gradients are summed in registers.
    """
    pid_n = tl.program_id(0)
    kv_h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_in = (offs_n[:, None] < S_K) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(
        K + b * stride_kb + kv_h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
        mask=kv_in,
        other=0.0,
    )
    v = tl.load(
        V + b * stride_vb + kv_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
        mask=kv_in,
        other=0.0,
    )
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    lo = 0
    if CAUSAL:  # key j is seen by queries i >= j - (S_k - S_q): start at the tile holding that row
        lo = tl.maximum(0, pid_n * BLOCK_N - (S_K - S_Q)) // BLOCK_M * BLOCK_M
    for g in range(0, GROUP):
        h = kv_h * GROUP + g
        Qh = Q + b * stride_qb + h * stride_qh
        dOh = dOut + b * stride_dob + h * stride_doh
        Mh = Mask
        if HAS_MASK:
            Mh = Mask + b * stride_mb + h * stride_mh
        row = (b * H + h) * S_Q
        for start_m in range(lo, S_Q, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q_in = (offs_m[:, None] < S_Q) & (offs_d[None, :] < HEAD_DIM)
            q = tl.load(Qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_in, other=0.0)
            do = tl.load(dOh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=q_in, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(Lse + row + offs_m, mask=offs_m < S_Q, other=0.0)
            delta = tl.load(Delta + row + offs_m, mask=offs_m < S_Q, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            valid = _valid_tile(offs_m, offs_n, S_Q, S_K, Mh, stride_mm, stride_mn, CAUSAL, HAS_MASK)
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=DOT_PRECISION)

    dk = dk * sm_scale
    tl.store(
        dK + b * stride_dkb + kv_h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
        dk.to(dK.dtype.element_ty),
        mask=kv_in,
    )
    tl.store(
        dV + b * stride_dvb + kv_h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
        dv.to(dV.dtype.element_ty),
        mask=kv_in,
    )


@triton.autotune(
    configs=_configs(_BWD_DQ_SPACE),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune(lambda c: c.kwargs["BLOCK_M"])},
    **_TUNE_KW,
)
@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    Mask,
    dOut,
    Lse,
    Delta,
    dQ,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_dqd,
    H,
    GROUP,
    S_Q,
    S_K,
    qk_scale,
    sm_scale,
    S_Q_KEY,
    S_K_KEY,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dQ = scale * dS K for one tile of queries. Grid (cdiv(S_q, BLOCK_M), H, B)."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    kv_h = h // GROUP
    K += b * stride_kb + kv_h * stride_kh
    V += b * stride_vb + kv_h * stride_vh
    if HAS_MASK:
        Mask += b * stride_mb + h * stride_mh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_in = (offs_m[:, None] < S_Q) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=q_in,
        other=0.0,
    )
    do = tl.load(
        dOut + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=q_in,
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    row = (b * H + h) * S_Q
    lse = tl.load(Lse + row + offs_m, mask=offs_m < S_Q, other=0.0)
    delta = tl.load(Delta + row + offs_m, mask=offs_m < S_Q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    hi = S_K
    if CAUSAL:
        hi = tl.minimum(S_K, tl.maximum(0, pid_m * BLOCK_M + BLOCK_M + (S_K - S_Q)))
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_in = (offs_n[:, None] < S_K) & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_in, other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_in, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        valid = _valid_tile(offs_m, offs_n, S_Q, S_K, Mask, stride_mm, stride_mn, CAUSAL, HAS_MASK)
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)

    dq = dq * sm_scale
    tl.store(
        dQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
        dq.to(dQ.dtype.element_ty),
        mask=q_in,
    )


# ---------------------------------------------------------------------------------------------
# Launchers: shapes checked by flash_attention(); here only strides, grids and constexprs.
# ---------------------------------------------------------------------------------------------
def _bhsd_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of a (B, S, H, D) tensor in (b, h, s, d) order."""
    return t.stride(0), t.stride(2), t.stride(1), t.stride(3)


def _mask_args(mask: torch.Tensor | None, like: torch.Tensor):
    if mask is None:
        return like, (0, 0, 0, 0)
    return mask, mask.stride()


def _interpreter_bf16(q: torch.Tensor) -> bool:
    """The interpreter's bf16 is wrong twice: tl.dot gives garbage and fp32 -> bf16 truncates
    instead of rounding to nearest. So there the kernels compute in fp32 (UPCAST) and write fp32
    buffers that torch rounds to bf16; compiled kernels do both natively."""
    return INTERPRET and q.dtype == torch.bfloat16


def _common_meta(q: torch.Tensor, causal: bool, mask: torch.Tensor | None) -> dict:
    D = q.shape[-1]
    return dict(
        HEAD_DIM=D,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        CAUSAL=bool(causal),
        HAS_MASK=mask is not None,
        UPCAST=_interpreter_bf16(q),
        DOT_PRECISION=FP32_DOT_PRECISION if q.dtype == torch.float32 else None,  # None: backend default
    )


def _flash_attn_forward(q, k, v, mask, causal: bool, scale: float):
    """q (B, H, S_q, D), k/v (B, H_kv, S_k, D), mask uint8 (B, H, S_q, S_k) view or None ->
    out (B, S_q, H, D) in q.dtype, lse (B, H, S_q) fp32 in log2 units."""
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    store = torch.float32 if _interpreter_bf16(q) else q.dtype
    out = torch.empty((B, S_q, H, D), device=q.device, dtype=store)
    lse = torch.empty((B, H, S_q), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out.to(q.dtype), lse
    mask_t, mask_strides = _mask_args(mask, q)

    def grid(meta):
        return triton.cdiv(S_q, meta["BLOCK_M"]), H, B

    _attn_fwd_kernel[grid](
        q,
        k,
        v,
        mask_t,
        out,
        lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *mask_strides,
        *_bhsd_strides(out),
        H,
        H // H_kv,
        S_q,
        S_k,
        scale * LOG2E,
        _bucket(S_q),
        _bucket(S_k),
        **_common_meta(q, causal, mask),
    )
    return out.to(q.dtype), lse


def _flash_attn_backward(do, q, k, v, out, lse, mask, causal: bool, scale: float):
    """do/out (B, S_q, H, D) -> dq (like q), dk/dv (like k/v), dk/dv summed over each GQA group."""
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    store = torch.float32 if _interpreter_bf16(q) else q.dtype
    dq, dk, dv = (torch.empty_like(t, dtype=store) for t in (q, k, v))
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_().to(q.dtype), dk.zero_().to(q.dtype), dv.zero_().to(q.dtype)
    meta = _common_meta(q, causal, mask)
    delta = torch.empty_like(lse)
    pre_block_m = 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(S_q, pre_block_m), H, B)](
        out,
        do,
        delta,
        *_bhsd_strides(out),
        *_bhsd_strides(do),
        H,
        S_q,
        HEAD_DIM=meta["HEAD_DIM"],
        BLOCK_D=meta["BLOCK_D"],
        BLOCK_M=pre_block_m,
    )
    mask_t, mask_strides = _mask_args(mask, q)
    common = (H, H // H_kv, S_q, S_k, scale * LOG2E, scale, _bucket(S_q), _bucket(S_k))

    def grid_kv(m):
        return triton.cdiv(S_k, m["BLOCK_N"]), H_kv, B

    _attn_bwd_dkdv_kernel[grid_kv](
        q,
        k,
        v,
        mask_t,
        do,
        lse,
        delta,
        dk,
        dv,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *mask_strides,
        *_bhsd_strides(do),
        *dk.stride(),
        *dv.stride(),
        *common,
        **meta,
    )

    def grid_q(m):
        return triton.cdiv(S_q, m["BLOCK_M"]), H, B

    _attn_bwd_dq_kernel[grid_q](
        q,
        k,
        v,
        mask_t,
        do,
        lse,
        delta,
        dq,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *mask_strides,
        *_bhsd_strides(do),
        *dq.stride(),
        *common,
        **meta,
    )
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward and backward are the Triton kernels above (FlashAttention-2).

    ``apply(q, k, v, mask, causal, scale)`` with q (B, H, S_q, D), k/v (B, H_kv, S_k, D), mask a
    uint8 view broadcast to (B, H, S_q, S_k) or None. Returns (B, S_q, H, D). Saves q, k, v, the
    output and the fp32 log-sum-exp (B, H, S_q); nothing of size S_q x S_k. Use
    :func:`flash_attention`, which validates its inputs, rather than calling this directly.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, causal, scale):
        out, lse = _flash_attn_forward(q, k, v, mask, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = _flash_attn_backward(do, q, k, v, out, lse, mask, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def is_available() -> tuple[bool, str]:
    """Whether the Triton kernels can run in this process, and why (not).

    Returns ``(True, how)`` when Triton is installed and either a CUDA (or ROCm) device is present
    or ``TRITON_INTERPRET=1`` was set before this module was imported (the kernels then run in
    Triton's CPU interpreter); otherwise ``(False, reason)`` with the fix in the reason.
    """
    if _TRITON_IMPORT_ERROR:
        return False, f"{_TRITON_IMPORT_ERROR}; install it with `pip install triton` (Linux x86_64)"
    if INTERPRET:
        return True, "Triton interpreter (TRITON_INTERPRET=1): the kernels run on the CPU, slowly"
    if torch.cuda.is_available():
        return True, f"CUDA device {torch.cuda.get_device_name(0)}"
    return False, (
        "no CUDA device and TRITON_INTERPRET is not 1; set TRITON_INTERPRET=1 before importing "
        "llmos_jupyter.ops.attention to run the kernels on the CPU"
    )


def runs_on(t: torch.Tensor) -> tuple[bool, str]:
    """Whether the kernels can take tensors on ``t.device`` here: CUDA tensors when compiled,
    any device under the interpreter. Returns ``(ok, reason)``."""
    ok, why = is_available()
    if not ok:
        return ok, why
    if not INTERPRET and t.device.type != "cuda":
        return False, f"tensors are on {t.device.type}, the compiled kernels need CUDA tensors"
    return True, why


def _check_inputs(q, k, v, attention_mask):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise UsageError(
            f"flash_attention wants 4-D q (B, H, S_q, D) and k, v (B, H_kv, S_k, D); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, H, S_q, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise UsageError(f"k and v must both be (B={B}, H_kv, S_k, D={D}); got {tuple(k.shape)} and {tuple(v.shape)}")
    H_kv = k.shape[1]
    if H_kv == 0 or H % H_kv:
        raise UsageError(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({H_kv})")
    if not (MIN_HEAD_DIM <= D <= MAX_HEAD_DIM):
        raise UsageError(f"head dim {D} is outside {MIN_HEAD_DIM}-{MAX_HEAD_DIM}; use torch SDPA for it")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise UsageError(f"q, k, v must share one dtype of fp16, bf16, fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise UsageError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dtype != torch.bool:
        raise UsageError(
            f"attention_mask must be boolean (True = attend), got {m.dtype}; for an additive float mask use torch SDPA"
        )
    if m.device != q.device:
        raise UsageError(f"attention_mask is on {m.device}, q on {q.device}; move it with .to(q.device)")
    if m.dim() == 2:  # (B, S_k) padding mask
        m = m[:, None, None, :]
    S_k = k.shape[2]
    try:
        m = m.view(torch.uint8).expand(B, H, S_q, S_k)  # zero-copy: broadcast dims get stride 0
    except RuntimeError:
        raise UsageError(
            f"attention_mask of shape {tuple(attention_mask.shape)} does not broadcast to "
            f"(B, H, S_q, S_k) = {(B, H, S_q, S_k)}; pass (B, 1, S_q, S_k) or (B, S_k)"
        ) from None
    return m


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused scaled-dot-product attention (FlashAttention-2, Dao 2023, arXiv:2307.08691) in Triton.

    Args:
        q: ``(B, H, S_q, D)`` queries, fp16, bf16 or fp32; any strides (transformers passes
            ``(B, S, H, D)`` transposed views; they are read in place).
        k, v: ``(B, H_kv, S_k, D)`` keys and values, same dtype and device; ``H % H_kv == 0``
            (grouped-query attention: query head ``h`` reads key/value head ``h // (H // H_kv)``).
            ``16 <= D <= 256``; D need not be a power of two.
        causal: if True, query ``i`` attends keys ``j <= i + S_k - S_q`` (bottom-right aligned, as
            FlashAttention-2 does, so a query chunk after a KV cache sees the whole cache).
            Combined (AND) with ``attention_mask`` when both are given. Default False.
        attention_mask: optional boolean mask, True = attend, of shape ``(B, 1, S_q, S_k)``,
            ``(B, H, S_q, S_k)``, anything broadcastable to it, or ``(B, S_k)`` padding. Default None.
        scale: softmax scale applied to ``q . k``; default ``1 / sqrt(D)``.

    Returns:
        ``(B, S_q, H, D)`` tensor in q's dtype (the layout transformers' attention functions
        return). A query row with no valid key (all padding, or above the causal diagonal when
        ``S_q > S_k``) gets zeros, and zero gradients.

    Differentiable in q, k and v (dK, dV summed over each query-head group). Softmax statistics
    and accumulators are fp32; P and dS are cast to the input dtype for the tensor-core matmuls.

    Raises:
        UsageError: wrong ranks or shapes, head dim outside 16-256, mixed or unsupported dtypes,
            a non-boolean or non-broadcastable mask, or tensors the kernels cannot run on here
            (see :func:`is_available`: needs CUDA tensors, or ``TRITON_INTERPRET=1``).
    """
    mask = _check_inputs(q, k, v, attention_mask)
    ok, why = runs_on(q)
    if not ok:
        raise UsageError(f"the Triton attention kernels cannot run here: {why}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return FlashAttentionFunction.apply(q, k, v, mask, bool(causal), scale)
