"""What ``%llm optimize`` measures on a model, the same way before and after.

Every number is measured on the model object in hand, never copied from a constant:

* **parameters** — distinct weights (:func:`~llmos_jupyter.resources.memory.count_params`:
  quantised packed weights included, tied weights once);
* **linear weights** — bytes of the weight matrices of every ``nn.Linear`` (int8 packed
  weights + their per-channel scales after ``int8``; torchao's inner tensors), the part that
  quantisation and structured pruning change;
* **file size** — the weights file(s) written by :func:`save_weights` (``model.safetensors``,
  or ``model_quantized.pt`` for quantised weights), sizes from ``os.stat``;
* **resident** — the growth of the process's RSS while the model was built, with glibc's free
  lists handed back first (how the resource manager measures a load);
* **speed** — seq-cls / embedding: forward passes over the same batches of ``batch_size``
  texts (each padded to its longest row, tokenised beforehand), one untimed pass first, then the
  median over ``repeats`` passes of the mean time per batch: latency per batch (ms) and
  samples/s = batch_size / latency. causal-lm: greedy decode of one prompt for exactly
  ``max_new_tokens`` tokens through the transformers engine that serves chat, median over
  ``repeats`` of tokens/s (after the first token) and time to first token;
* **first pass** — the untimed pass above, in seconds: with ``--compile`` that is where
  compilation happens, so *compile time* = first pass − a timed pass.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Texts for speed when no dataset is named: short reviews, like the packaged Rotten Tomatoes data.
SPEED_TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "the plot is thin and the jokes fall flat, but the cast seems to be having fun anyway.",
    "an uneven but often moving portrait of grief.",
    "i wanted to walk out after twenty minutes.",
    "a smart, sharp-eyed comedy that never talks down to its audience and never loses its nerve.",
    "too long, too loud and too pleased with itself.",
    "the performances are terrific, the script less so.",
    "a film of quiet, devastating power.",
]
SPEED_PROMPT = "Write one sentence about the sea."


@dataclass
class Sample:
    """One column of the table: a model measured (see the module docstring for each field).

    Attributes:
        params: distinct weights. weight_bytes: all tensors (``module_bytes``).
        linear_bytes: bytes of the ``nn.Linear`` weight matrices.
        disk_bytes: bytes of the weights files; files: their names.
        resident_bytes: RSS growth while it was built (None when not measured).
        latency_ms / samples_per_s: seq-cls and embedding, per batch of ``batch_size``.
        tokens_per_s / ttft_s: causal-lm greedy decode.
        first_pass_s: the untimed first pass (compilation happens here); pass_s: the median
            timed pass (all batches once, or one generation).
        metrics: the named split's metrics (accuracy, macro_f1 | loss, perplexity | answer
            accuracy, valid) — empty without a dataset.
        sparsity: share of exact zeros in the hidden linear weights.
    """

    params: int = 0
    weight_bytes: int = 0
    linear_bytes: int = 0
    disk_bytes: int = 0
    files: list = field(default_factory=list)
    resident_bytes: int | None = None
    latency_ms: float | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    ttft_s: float | None = None
    first_pass_s: float | None = None
    pass_s: float | None = None
    metrics: dict = field(default_factory=dict)
    sparsity: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def linear_bytes(model: Any) -> int:
    """Bytes of the weight matrices of every ``nn.Linear`` of ``model``, quantised or not."""
    from torch import nn

    from ..resources.memory import _leaf_tensors, _nbytes, _packed_weight_bias, quantized_parts

    total = 0
    for m in model.modules():
        wb = _packed_weight_bias(m)
        if wb is not None:
            total += sum(_nbytes(t) for t in quantized_parts(wb[0]))
        elif isinstance(m, nn.Linear):
            total += sum(_nbytes(t) for t in _leaf_tensors(m.weight))
    return total


def save_weights(model: Any, folder: Path, *, auto_class: str, level: str | None) -> tuple[int, list[str]]:
    """Write ``model``'s weights into ``folder`` and return ``(bytes of the weights files, all
    file names written)``: ``save_pretrained`` (safetensors + config) for float weights,
    :func:`~.quantize.save_quantized` for quantised ones."""
    from ..training.export import quiet_saving
    from .quantize import WEIGHTS_FILE, save_quantized

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if level in ("int8", "int8-weight", "int4"):
        files = save_quantized(model, folder, level=level, task_class=auto_class)
        weights = [WEIGHTS_FILE]
    else:
        with quiet_saving():
            model.save_pretrained(folder, safe_serialization=True)
        files = sorted(p.name for p in folder.iterdir())
        weights = [f for f in files if f.endswith(".safetensors")]
    return sum(os.stat(folder / f).st_size for f in weights), files


def _sync(model: Any) -> None:
    import torch

    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)


def encode_batches(tokenizer: Any, texts: list[str], *, batch_size: int, max_length: int, device: str) -> list[dict]:
    """``texts`` tokenised into batches of ``batch_size`` (each padded to its longest row,
    truncated at ``max_length``), on ``device``."""
    return [
        dict(
            tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
        )
        for i in range(0, len(texts), batch_size)
    ]


def forward_speed(model: Any, batches: list[dict], *, repeats: int = 3) -> dict[str, float]:
    """Time forward passes over ``batches`` (see the module docstring).

    Returns:
        ``{"latency_ms": median over repeats of the mean ms per batch, "first_pass_s",
        "pass_s": median seconds of one timed pass}``.
    """
    import torch

    def one_pass() -> float:
        t0 = time.perf_counter()
        for b in batches:
            model(**b)
        _sync(model)
        return time.perf_counter() - t0

    model.eval()
    with torch.inference_mode():
        first = one_pass()
        passes = [one_pass() for _ in range(max(1, repeats))]
    med = statistics.median(passes)
    return {"latency_ms": med / len(batches) * 1000.0, "first_pass_s": first, "pass_s": med}


def generation_speed(
    model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int = 32, repeats: int = 3
) -> dict[str, float]:
    """Greedy decode of ``prompt`` for exactly ``max_new_tokens`` tokens on the transformers
    engine (the path ``%llm chat`` takes): one untimed call, then the median of ``repeats``.

    Returns:
        ``{"tokens_per_s", "ttft_s", "first_pass_s"}`` (tokens/s after the first token).
    """
    from ..models.engines.base import GenerationSettings
    from ..models.engines.hf import TransformersEngine

    engine = TransformersEngine(model, tokenizer)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, extra={"min_new_tokens": max_new_tokens})
    t0 = time.perf_counter()
    engine.generate(prompt, settings, add_special_tokens=False)
    first = time.perf_counter() - t0
    stats = [engine.generate(prompt, settings, add_special_tokens=False)[1] for _ in range(max(1, repeats))]
    return {
        "tokens_per_s": statistics.median(s.tokens_per_s for s in stats),
        "ttft_s": statistics.median(s.ttft_s or 0.0 for s in stats),
        "first_pass_s": first,
        "pass_s": statistics.median(s.total_s for s in stats),
    }


def first_pass(
    model: Any,
    tokenizer: Any,
    *,
    task: str,
    batches: list[dict] | None = None,
    prompt: str = "",
    max_new_tokens: int = 32,
) -> float:
    """Seconds of one pass as :func:`sample` times it (all ``batches`` once, or one generation
    of ``prompt``): run right after ``torch.compile``, it is the pass that compiles."""
    import torch

    from ..models.engines.base import GenerationSettings
    from ..models.engines.hf import TransformersEngine

    t0 = time.perf_counter()
    if task == "causal-lm":
        settings = GenerationSettings(max_new_tokens=max_new_tokens, extra={"min_new_tokens": max_new_tokens})
        TransformersEngine(model, tokenizer).generate(prompt or SPEED_PROMPT, settings, add_special_tokens=False)
    else:
        with torch.inference_mode():
            for b in batches or ():
                model(**b)
        _sync(model)
    return time.perf_counter() - t0


def sample(
    model: Any,
    tokenizer: Any,
    *,
    task: str,
    batches: list[dict] | None = None,
    prompt: str = "",
    repeats: int = 3,
    max_new_tokens: int = 32,
    evaluate: Callable[[Any], dict] | None = None,
    folder: Path | None = None,
    auto_class: str = "",
    level: str | None = None,
    resident_bytes: int | None = None,
) -> Sample:
    """Measure ``model`` once (every field of :class:`Sample` the arguments allow).

    Args:
        batches: encoded batches for seq-cls / embedding speed (:func:`encode_batches`).
        prompt: the rendered prompt for causal-lm speed.
        evaluate: ``evaluate(model) -> metrics`` on the named split (None: no metrics).
        folder: where :func:`save_weights` writes (None: file size not measured).
        auto_class / level: for :func:`save_weights`.
        resident_bytes: the RSS growth measured while it was built.
    """
    from ..resources.memory import count_params, module_bytes
    from .prune import sparsity

    s = Sample(
        params=count_params(model),
        weight_bytes=sum(module_bytes(model).values()),
        linear_bytes=linear_bytes(model),
        resident_bytes=resident_bytes,
        sparsity=sparsity(model),
    )
    if folder is not None:
        s.disk_bytes, s.files = save_weights(model, folder, auto_class=auto_class, level=level)
    if task == "causal-lm":
        g = generation_speed(model, tokenizer, prompt or SPEED_PROMPT, max_new_tokens=max_new_tokens, repeats=repeats)
        s.tokens_per_s, s.ttft_s = g["tokens_per_s"], g["ttft_s"]
        s.first_pass_s, s.pass_s = g["first_pass_s"], g["pass_s"]
    elif batches:
        f = forward_speed(model, batches, repeats=repeats)
        rows = sum(int(b["input_ids"].shape[0]) for b in batches)
        s.latency_ms, s.first_pass_s, s.pass_s = f["latency_ms"], f["first_pass_s"], f["pass_s"]
        s.samples_per_s = rows / f["pass_s"]
    if evaluate is not None:
        s.metrics = dict(evaluate(model))
    return s
