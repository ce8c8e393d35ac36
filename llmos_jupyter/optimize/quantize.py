"""Quantise a loaded transformers model: int8 dynamic, int8 / int4 weight-only, bf16 / fp16.

One public function, :func:`quantize`, changes a model in place to one *level*:

=============  =====================================================  ==============================================
level          on the CPU                                             on a CUDA GPU
=============  =====================================================  ==============================================
``int8``       torch.ao ``quantize_dynamic``: every ``nn.Linear``      torchao ``Int8DynamicActivationInt8WeightConfig``
               gets int8 weights (per output channel) and int8
               activations quantised per batch at run time (x86 /
               fbgemm int8 GEMM with VNNI)
``int8-weight``  torchao ``Int8WeightOnlyConfig``: int8 weights (per     the same
               channel), activations stay float, dequantised in the
               matmul — smaller, not faster on a CPU
``int4``       not available: torchao's int4 weight-only kernels run   torchao ``Int4WeightOnlyConfig`` (group 128,
               on CUDA (tinygemm, compute capability ≥ 8.0) or Intel   ``tile_packed_to_4d``), bf16 activations
               XPU only (torchao 0.18 dropped its CPU layout)
``bf16``       ``model.to(torch.bfloat16)``                           the same
``fp16``       not offered (no fast fp16 GEMM on CPUs)                ``model.to(torch.float16)``
=============  =====================================================  ==============================================

Why ``quantize_dynamic`` for CPU int8 (measured side by side in one process,
``benchmarks/benchmark_optimize.py --choose-int8``: MiniLM-L6 seq-cls, 6 batches of 32 Rotten
Tomatoes reviews, 2 threads, torch 2.13.0, torchao 0.18.0, ms per batch and × fp32; runs 1 and 2 on
a 2-core machine shared with other processes, load average 3 to 4.6; run 3 on a quiet one, load
average about 1)::

    backend                          run 1 (3 rounds)   run 2 (5 rounds)   run 3 (quiet)      max |Δ logit|  compiles
    fp32                             405 ms  1.00×      810 ms  1.00×      253 ms  1.00×      0
    torch.ao quantize_dynamic        586 ms  0.69×      560 ms  1.44×      133 ms  1.90×      0.013
    torchao int8 dynamic (eager)     2367 ms 0.17×      792 ms  1.02×      218 ms  1.16×      0.007
    torchao int8 dynamic + compile   775 ms  0.52×      170 ms  4.76×      109 ms  2.31×      0.006      17 to 90 s
    torchao int8 weight-only         397 ms  1.02×      1094 ms 0.74×      265 ms  0.95×      0.002
    torchao int8 weight-only + cmp.  587 ms  0.69×      1421 ms 0.57×      232 ms  1.09×      0.002      7 to 22 s

In eager mode ``quantize_dynamic`` beat torchao's int8 dynamic config in every run (torchao
dequantises on a CPU unless compiled), and on the whole test split it gave 1.80× to 2.17× fp32 (see
``docs/optimize.md``). torchao under ``torch.compile`` is faster still on a quiet machine (2.31× vs
1.90×) but costs 17 to 90 s of compilation per model and per process, and was slower than fp32 in
the loaded run 1. So ``quantize_dynamic`` is the CPU int8 backend (eager, no compile cost);
torchao serves weight-only int8 (its size without a speed claim) and the CUDA levels, and
torchao 0.18 has no CPU int4 layout at all. torch 2.13 marks
torch.ao's quantised tensors as deprecated (pytorch/pytorch#184982); when they go, torchao's CPU
int8 under ``torch.compile`` replaces it.

torchao is an optional extra (``pip install 'llmos-jupyter[optimize]'``): once it is installed,
transformers imports it on every model load (``transformers.quantizers``), which cost 110 MiB of
RSS and 2.6 s per process here — too much to impose on every user for two levels that only
shrink weights on a CPU. Without it the CPU offers ``int8`` and ``bf16``.

Sources: https://docs.pytorch.org/docs/stable/quantization.html (dynamic quantisation),
https://github.com/pytorch/ao (torchao's ``quantize_`` configs and the hardware each runs on).

Saving: :func:`save_quantized` writes the quantised ``state_dict`` with ``torch.save`` (int8
tensors, loadable with ``torch.load(..., weights_only=True)``: no code runs) next to the
config; :func:`load_quantized` is the four-line recipe that rebuilds it with plain
transformers + torch (written into ``llmos_quantization.json`` as text too).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import UsageError

LEVELS = ("int8", "int8-weight", "int4", "bf16", "fp16")
RECIPE_FILE = "llmos_quantization.json"
WEIGHTS_FILE = "model_quantized.pt"

_CPU = {
    "int8": "torch.ao quantize_dynamic (int8 weights per channel + int8 activations per batch, fbgemm/x86 kernels)",
    "int8-weight": "torchao Int8WeightOnlyConfig (int8 weights per channel, float activations)",
    "bf16": "bfloat16 weights and activations",
}
_CUDA = {
    "int8": "torchao Int8DynamicActivationInt8WeightConfig",
    "int8-weight": "torchao Int8WeightOnlyConfig",
    "int4": "torchao Int4WeightOnlyConfig (group 128, tinygemm; compute capability >= 8.0, bf16 activations)",
    "bf16": "bfloat16 weights and activations",
    "fp16": "float16 weights and activations",
}
_NOT_ON_CPU = {
    "int4": "int4 weight-only runs on CUDA GPUs only (torchao's tinygemm kernel, compute capability >= 8.0)",
    "fp16": "fp16 has no fast matrix multiply on CPUs",
}


TORCHAO_LEVELS = ("int8-weight", "int4")  # on a CPU; on CUDA every integer level is torchao's
EXTRA_HINT = "pip install 'llmos-jupyter[optimize]'"


def torchao_installed() -> bool:
    """Whether torchao can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def _needs_torchao(level: str, device: str) -> bool:
    return level in TORCHAO_LEVELS or (level == "int8" and str(device).startswith("cuda"))


def supported(device: str = "cpu") -> dict[str, str]:
    """The levels :func:`quantize` offers on ``device`` (``"cpu"`` or ``"cuda:N"``) with what is
    installed, and the backend each one uses."""
    if str(device).startswith("cuda"):
        import torch

        cc = torch.cuda.get_device_capability(torch.device(device)) if torch.cuda.is_available() else (0, 0)
        have = {k: v for k, v in _CUDA.items() if k != "int4" or cc >= (8, 0)}
    else:
        have = dict(_CPU)
    if not torchao_installed():
        have = {k: v for k, v in have.items() if not _needs_torchao(k, device)}
    return have


def check(level: str, device: str = "cpu") -> str:
    """Validate ``level`` for ``device``; returns the backend description.

    Raises:
        UsageError: an unknown level, one this device does not run, or one that needs torchao
            when it is not installed (each naming the levels available here).
    """
    have = supported(device)
    here = f"on this {str(device).split(':')[0]}: {', '.join(have) or 'none'}"
    if level not in LEVELS:
        raise UsageError(f"unknown quantisation level '{level}'; use one of {', '.join(LEVELS)} (available {here})")
    if level in have:
        return have[level]
    cuda = str(device).startswith("cuda")
    if level in (_CUDA if cuda else _CPU) and _needs_torchao(level, device) and not torchao_installed():
        raise UsageError(
            f"--quantize {level} needs torchao, which is not installed: `{EXTRA_HINT}`; available without it {here}"
        )
    why = "torchao's int4 kernel needs compute capability >= 8.0" if cuda else _NOT_ON_CPU[level]
    raise UsageError(f"--quantize {level} is not available on {device}: {why}; available {here}")


@contextlib.contextmanager
def _quiet_torchao():
    """torchao logs one warning per CUDA extension it cannot load on a CPU build of torch (and
    torch one about an Enum it registers); neither is the user's to act on."""
    names = ("torchao", "torch.utils._pytree")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


def _torchao():
    """``torchao.quantization``, imported quietly.

    Raises:
        UsageError: torchao is not installed (naming the pip command).
    """
    try:
        with _quiet_torchao():
            import torchao.quantization as tq
    except ImportError:
        raise UsageError(f"this level needs torchao: `{EXTRA_HINT}` (then retry)") from None
    return tq


def current(model: Any) -> str | None:
    """The quantisation ``model`` already carries: ``"int8"`` (torch.ao dynamic layers),
    ``"torchao"`` (torchao tensor subclasses), ``"bf16"`` / ``"fp16"`` (half weights), or
    ``None`` for float32 weights."""
    import torch
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if any(hasattr(getattr(m, "_packed_params", None), "_weight_bias") for m in model.modules()):
        return "int8"
    params = list(model.parameters())
    if any(is_traceable_wrapper_subclass(p.data if isinstance(p, torch.nn.Parameter) else p) for p in params):
        return "torchao"
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if dtypes == {torch.bfloat16}:
        return "bf16"
    if dtypes == {torch.float16}:
        return "fp16"
    return None


def quantize(model: Any, level: str) -> dict[str, Any]:
    """Quantise ``model`` (a transformers model on its device, eval mode) in place.

    Args:
        model: its ``nn.Linear`` layers are what int8/int4 change (the classification head and
            ``lm_head`` included; embeddings and norms stay float).
        level: one of :data:`LEVELS` that :func:`supported` offers on the model's device.

    Returns:
        ``{"level", "backend", "device"}``; the model object itself is changed (torch.ao swaps
        ``nn.Linear`` modules for ``torch.ao.nn.quantized.dynamic.Linear``; torchao swaps the
        weights for tensor subclasses; bf16/fp16 cast every float tensor).

    Raises:
        UsageError: see :func:`check`; a model that is already quantised (int8 of int8).
    """
    import torch

    device = str(next(model.parameters()).device)
    backend = check(level, device)
    have = current(model)
    if have is not None:
        raise UsageError(f"this model is already quantised ({have}); quantise its float32 original instead")
    if level in ("bf16", "fp16"):
        model.to(torch.bfloat16 if level == "bf16" else torch.float16)
    elif level == "int8" and not device.startswith("cuda"):
        _quantize_dynamic(model)
    else:
        tq = _torchao()
        if level == "int8":
            config = tq.Int8DynamicActivationInt8WeightConfig()
        elif level == "int8-weight":
            config = tq.Int8WeightOnlyConfig()
        else:  # int4 on CUDA: tinygemm takes bf16 activations
            model.to(torch.bfloat16)
            config = tq.Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
        with _quiet_torchao():
            tq.quantize_(model, config)
    model.eval()
    return {"level": level, "backend": backend, "device": device}


@contextlib.contextmanager
def _no_qtensor_warning():
    """torch 2.13 warns, each time a qint8 tensor is made, that quantised tensors will go in a
    future release (pytorch/pytorch#184982); the module docstring says so once."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)  # torch.load
        yield


def _quantize_dynamic(model: Any) -> None:
    """torch.ao's dynamic int8 quantisation of every ``nn.Linear``, weights per output channel."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with _no_qtensor_warning():
        quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


# ------------------------------------------------------------------------------ save / load
RECIPE = {
    "int8": (
        "model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: "
        "torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)"
    ),
    "int8-weight": "torchao.quantization.quantize_(model, torchao.quantization.Int8WeightOnlyConfig())",
    "int4": (
        "model.to(torch.bfloat16); torchao.quantization.quantize_(model, torchao.quantization."
        "Int4WeightOnlyConfig(group_size=128, int4_packing_format='tile_packed_to_4d'))"
    ),
}


# the transformers Auto class that rebuilds a saved model of each task (for save_quantized)
TASK_CLASS = {
    "seq-cls": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "embedding": "AutoModel",
}


def save_quantized(model: Any, folder: Path, *, level: str, task_class: str) -> list[str]:
    """Write a quantised model into ``folder``: ``config.json``, the quantised ``state_dict``
    (``model_quantized.pt``, ``torch.save``; int8 tensors and their scales) and
    ``llmos_quantization.json`` (level, class, and the lines that rebuild it).

    Args:
        level: the level it was quantised to (``int8``, ``int8-weight``, ``int4``).
        task_class: the transformers Auto class to rebuild it with, e.g.
            ``AutoModelForSequenceClassification``.

    Returns:
        The file names written.
    """
    import torch

    folder = Path(folder)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / WEIGHTS_FILE)
    recipe = {
        "level": level,
        "weights": WEIGHTS_FILE,
        "auto_class": task_class,
        "load": [
            "import torch, transformers" + (", torchao" if level != "int8" else ""),
            f"model = transformers.{task_class}.from_config(transformers.AutoConfig.from_pretrained(FOLDER))",
            RECIPE[level],
            f"model.load_state_dict(torch.load(FOLDER + '/{WEIGHTS_FILE}', weights_only=True), assign=True)",
        ],
    }
    (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2))
    return ["config.json", WEIGHTS_FILE, RECIPE_FILE]


def load_quantized(folder: str | Path) -> Any:
    """Rebuild a model written by :func:`save_quantized` (the recipe in its
    ``llmos_quantization.json``, run with plain transformers + torch), in eval mode.

    Raises:
        UsageError: the folder holds no ``llmos_quantization.json``.
    """
    import torch
    import transformers

    folder = Path(folder)
    if not (folder / RECIPE_FILE).is_file():
        raise UsageError(f"{folder} has no {RECIPE_FILE}; it is not a quantised llmos export")
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    from ..models.loading import quiet_transformers

    with quiet_transformers():
        model = getattr(transformers, recipe["auto_class"]).from_config(transformers.AutoConfig.from_pretrained(folder))
    model.eval()
    if recipe["level"] == "int8":
        _quantize_dynamic(model)
    else:
        quantize(model, recipe["level"])
    with _quiet_torchao(), _no_qtensor_warning():
        state = torch.load(folder / recipe["weights"], weights_only=True)
    model.load_state_dict(state, assign=True)
    return model
