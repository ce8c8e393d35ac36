"""Sizes and memory figures: parsing ``"24GiB"``, estimates before load, measurement after.

Units: GiB = 2**30 bytes, GB = 10**9 bytes (as accelerate's ``convert_file_size_to_int`` keeps
them apart). Every size in llmos is an ``int`` of bytes.
"""

from __future__ import annotations

import logging
import math
import re

from ..errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2, "float64": 8, "int8": 1}


def parse_size(text: str | int | float) -> int:
    """Parse ``"24GiB"``, ``"1.5 GB"``, ``"512MiB"`` or a plain byte count into bytes.

    >>> parse_size("2GiB"), parse_size("2GB"), parse_size(1024)
    (2147483648, 2000000000, 1024)

    Raises:
        UsageError: the text is not a size.
    """
    if isinstance(text, (int, float)):
        if text < 0:
            raise UsageError(f"size must be ≥ 0, got {text}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"'{text}' is not a size; write e.g. 8GiB (2**30 bytes), 8GB (10**9 bytes) or 1024 (bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int | float | None) -> str:
    """``1610612736`` → ``"1.50 GiB"`` (binary units); ``None`` → ``"-"``."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _leaf_tensors(t) -> list:
    """The plain tensors that hold the data of ``t``: ``[t]`` for an ordinary tensor, the inner
    tensors (recursively) of a tensor subclass that wraps others (torchao's quantised weights
    flatten into ``qdata``, ``scale``, ... through ``__tensor_flatten__``)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [leaf for n in names for leaf in _leaf_tensors(getattr(t, n))]


def _packed_weight_bias(module):
    """``(weight, bias)`` of torch.ao's dynamic-quantised ``Linear`` (int8 weight, float bias),
    whose packed weights live outside ``parameters()``/``buffers()``; ``None`` for other modules."""
    unpack = getattr(getattr(module, "_packed_params", None), "_weight_bias", None)
    return unpack() if unpack is not None else None


def _packed_tensors(module) -> list:
    """The packed int8 weight, its per-channel scales and zero points, and the bias of a
    dynamic-quantised layer (see :func:`_packed_weight_bias`); ``[]`` for other modules."""
    wb = _packed_weight_bias(module)
    if wb is None:
        return []
    w, b = wb
    return quantized_parts(w) + ([b] if b is not None else [])


def quantized_parts(t) -> list:
    """``[t]``, plus the per-channel scales and zero points of a per-channel quantised ``t``."""
    import torch

    if t.is_quantized and t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return [t, t.q_per_channel_scales(), t.q_per_channel_zero_points()]
    return [t]


def _nbytes(t) -> int:
    """Bytes of ``t``'s storage (a quantised tensor: its int8 values)."""
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


def module_bytes(module) -> dict[str, int]:
    """Measured bytes of a ``torch.nn.Module``'s weights, per device: parameters and buffers
    (the inner tensors of tensor subclasses such as torchao's quantised weights) and the packed
    weights of torch.ao's dynamic-quantised layers.

    Tensors that share storage (tied embeddings) are counted once.

    Returns:
        ``{"cpu": n}`` or ``{"cuda:0": n, "cpu": m}``; ``{}`` for a module with no tensors.
    """
    seen: set[int] = set()
    out: dict[str, int] = {}
    tensors = list(module.parameters()) + list(module.buffers())
    tensors += [t for m in module.modules() for t in _packed_tensors(m)]
    for top in tensors:
        for t in _leaf_tensors(top):
            if t.device.type == "meta":
                continue
            try:
                key = t.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):
                key = id(t)
            if key in seen:
                continue
            seen.add(key)
            dev = str(t.device)
            out[dev] = out.get(dev, 0) + _nbytes(t)
    return out


def count_params(module) -> int:
    """Number of distinct weights (tied weights counted once), quantised ones included: the
    elements of every parameter, and of the packed weight and bias of torch.ao's
    dynamic-quantised layers (which are not ``parameters()``)."""
    seen, n = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    for m in module.modules():
        wb = _packed_weight_bias(m)
        if wb is not None:
            n += sum(t.numel() for t in wb if t is not None)
    return n


def estimate_from_config(config, model_class, dtype_bytes: int = 4) -> tuple[int, int]:
    """Estimate ``(params, bytes)`` of a model from its config without allocating weights.

    ``model_class`` is the transformers class to build (e.g. ``AutoModelForCausalLM``; anything
    with ``from_config``). Builds the model on the meta device (accelerate's
    ``init_empty_weights``, see
    https://huggingface.co/docs/accelerate/concept_guides/big_model_inference) and counts
    distinct parameters; bytes = params × ``dtype_bytes`` plus buffers.
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_class.from_config(config)
    # transformers 5 leaves input/output embeddings untied under accelerate's meta init (and
    # tie_weights() inside the context re-registers a new parameter); untied, a
    # tie_word_embeddings model is over-estimated (+34% on a tiny Llama). Tie outside it.
    try:
        model.tie_weights()
    except Exception as e:  # a remote-code model without tying: the estimate counts both copies
        logging.getLogger(__name__).info("tie_weights failed on the meta model (%s); estimating untied", e)
    params = count_params(model)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params, params * dtype_bytes + buffers


# What a loaded tokenizer holds in the process (its vocabulary and merge tables as Python and
# Rust objects), per vocabulary entry or BPE merge. Measured as the RSS delta of a load minus
# the model's tensor bytes: MiniLM (30,522 WordPiece entries) 16.3 MiB = 561 B each; SmolLM2
# from its GGUF (49,152 tokens + 48,900 merges) 53.1 MiB = 568 B each.
TOKENIZER_BYTES_PER_ENTRY = 565


def tokenizer_bytes(entries: int) -> int:
    """Estimated resident bytes of a tokenizer with ``entries`` vocabulary entries + merges."""
    return int(entries) * TOKENIZER_BYTES_PER_ENTRY


def process_rss() -> int:
    """Resident set size of this process in bytes (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss


# ----------------------------------------------------------------- durations (keep-alive)
_DURATION_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float | None) -> float | None:
    """Parse a keep-alive duration into seconds (Ollama's ``keep_alive`` convention, with one
    forever value).

    ``"30s"``, ``"10m"``, ``"1h"``, ``"1h30m"``, ``"1.5h"`` or plain seconds (``90``, ``"90"``);
    ``0`` means "unload right after each call"; ``-1`` (or ``None``) means forever, the notebook
    default. Other negative numbers (``-5``) are refused rather than read as forever: they are
    more likely a typo than a wish (Ollama reads any negative as forever).

    >>> parse_duration("10m"), parse_duration("1h30m"), parse_duration(0), parse_duration("-1")
    (600.0, 5400.0, 0.0, None)

    Returns:
        Seconds as a float, or ``None`` for forever.

    Raises:
        UsageError: the text is not a duration, a negative other than -1, or not finite.
    """
    bad = UsageError(f"'{text}' is not a duration; write e.g. 30s, 10m, 1h, 0 (after each call) or -1 (forever)")
    if text is None:
        return None
    if isinstance(text, bool):
        raise bad
    if isinstance(text, (int, float)):
        if text == -1:
            return None
        if not math.isfinite(text) or text < 0:
            raise bad
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"-\s*1(\.0*)?\s*", s):
        return None
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", s)
    if (
        not s
        or not parts
        or re.sub(r"[0-9]*\.?[0-9]+\s*[a-z]*", "", s).strip()
        or any(u not in _DURATION_UNITS for _, u in parts)
        or (len(parts) > 1 and any(u == "" for _, u in parts))
    ):
        raise bad
    return float(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def format_duration(seconds: float | None) -> str:
    """``600`` → ``"10m"``, ``5400`` → ``"1h30m"``, ``2.5`` → ``"2.5s"``, ``None`` → ``"forever"``."""
    if seconds is None:
        return "forever"
    if seconds < 60:
        return f"{seconds:g}s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"
