"""Plug the Triton attention into transformers as ``attn_implementation="llmos_triton"``.

transformers calls an attention function as ``fn(module, query, key, value, attention_mask,
dropout=, scaling=, is_causal=, **kwargs)`` with query (B, H, S_q, D), key/value (B, H_kv, S_k, D),
and expects ``(output (B, S_q, H, D), weights or None)``. A custom function only receives a
padding mask if a mask function is registered under the same name (without it a left-padded
batch attends to its pad tokens and the real tokens' logits drift by ~19), so :func:`register`
registers ``sdpa_mask`` with it: boolean 4-D masks, True = attend, or ``None`` when plain causal /
full attention is exact.

The fallback is as visible as the fast path: every case the kernels do not cover goes to
transformers' own SDPA function with a one-time ``RuntimeWarning`` naming the reason.
"""

from __future__ import annotations

import warnings

from llmos_jupyter.ops import attention as _attn

_NOTICED: set[str] = set()


def _notice_once(reason: str) -> None:
    if reason not in _NOTICED:
        _NOTICED.add(reason)
        warnings.warn(f"{_attn.NAME} attention: {reason}; using PyTorch SDPA instead", RuntimeWarning, stacklevel=3)


def fallback_reason(module, query, key, value, attention_mask, dropout: float, kwargs: dict) -> str:
    """Why this call cannot use the Triton kernels (``""`` when it can)."""
    import torch

    if _attn.USE_TRITON is False:
        return "disabled (llmos_jupyter.ops.attention.USE_TRITON = False)"
    ok, why = _attn.runs_on(query)
    if not ok:
        return why
    if dropout and dropout > 0.0:
        return "attention dropout in training is not implemented in the kernels"
    if kwargs.get("softcap") is not None:
        return "logit softcapping is not implemented in the kernels"
    if kwargs.get("sliding_window") is not None:
        return "sliding-window attention is not implemented in the kernels"
    if kwargs.get("position_bias") is not None:
        return "additive position bias is not implemented in the kernels"
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        return "attention sinks are not implemented in the kernels"
    if attention_mask is not None and not (
        isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.bool
    ):
        return "only boolean masks are supported (got an additive or block mask)"
    D = query.shape[-1]
    if key.shape[-1] != D or value.shape[-1] != D:
        return "query, key and value head dims differ"
    if not (_attn.MIN_HEAD_DIM <= D <= _attn.MAX_HEAD_DIM):
        return f"head dim {D} is outside {_attn.MIN_HEAD_DIM}-{_attn.MAX_HEAD_DIM}"
    if query.dtype not in _attn.SUPPORTED_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtypes {query.dtype}/{key.dtype}/{value.dtype} are not one shared dtype of fp16, bf16, fp32"
    if query.shape[1] % key.shape[1]:
        return "query heads are not a multiple of key/value heads"
    return ""


def llmos_triton_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """transformers attention function backed by :func:`~llmos_jupyter.ops.attention.flash_attention`.

    Args:
        module: the calling attention module (``is_causal`` is read from it when not passed).
        query: ``(B, H, S_q, D)``; key, value: ``(B, H_kv, S_k, D)``.
        attention_mask: boolean ``(B, 1, S_q, S_k)`` from ``sdpa_mask`` (True = attend), or None.
        dropout: attention dropout probability; > 0 falls back to SDPA.
        scaling: softmax scale; None means ``1/sqrt(D)``.
        is_causal: overrides ``module.is_causal``.

    Returns:
        ``(output (B, S_q, H, D), None)``.

    Causality follows transformers' SDPA integration exactly: a given mask already holds the causal
    pattern; without a mask, ``is_causal`` applies only when ``S_q > 1``, and when ``S_k > S_q``
    (prefill into a static cache, whose extra keys are empty) the keys are cut to ``S_q``.
    """
    reason = fallback_reason(module, query, key, value, attention_mask, dropout, kwargs)
    if reason:
        _notice_once(reason)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )

    q_len, kv_len = query.shape[2], key.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(is_causal) and attention_mask is None and q_len > 1
    if causal and kv_len > q_len:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    if attention_mask is not None and attention_mask.shape[-1] > key.shape[2]:
        attention_mask = attention_mask[..., : key.shape[2]]
    out = _attn.flash_attention(query, key, value, causal=causal, attention_mask=attention_mask, scale=scaling)
    return out, None


def register() -> str:
    """Register ``"llmos_triton"`` with transformers and return that name. Idempotent.

    Registers the attention function (``AttentionInterface``) together with ``sdpa_mask`` as its
    mask function (``AttentionMaskInterface``), so models get boolean 4-D padding masks rather
    than ``attention_mask=None``. Afterwards
    ``AutoModel.from_pretrained(..., attn_implementation="llmos_triton")`` works for models that
    support attention backends (Llama-type, BERT-type, ...).
    Source: https://huggingface.co/docs/transformers/attention_interface
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(_attn.NAME, llmos_triton_attention_forward)
    AttentionMaskInterface.register(_attn.NAME, sdpa_mask)
    return _attn.NAME
