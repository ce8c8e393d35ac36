"""Compile a loaded transformers model with ``torch.compile`` (TorchDynamo + Inductor).

:func:`compile_model` changes the model in place:

* **seq-cls / embedding**: the module's forward is compiled (``nn.Module.compile``: the model
  keeps its class, config, ``state_dict`` and ``save_pretrained``). Batches of other lengths
  reuse one graph with a symbolic sequence length (Dynamo's automatic dynamic shapes: the
  first call compiles for its shape, the first call of another shape recompiles with the
  length as a symbol, later lengths reuse it).
* **causal-lm**: transformers compiles the *decode step* itself when a generation uses a
  static KV cache (``generation_config.cache_implementation = "static"`` plus a
  ``CompileConfig``; https://huggingface.co/docs/transformers/llm_optims#static-kv-cache-and-torchcompile).
  On a CPU transformers only does so when ``CompileConfig._compile_all_devices`` is set, which
  this sets; the prompt (prefill) runs eagerly. The static cache is sized for
  :data:`STATIC_CACHE_LEN` positions (``generation_config.max_cache_len``), so its shapes do not
  change from call to call (a longer prompt + answer grows it, and recompiles once).

Compiling happens on the first calls, not here: the driver times that warm-up as the
*compile time* (tracing, Inductor's code generation, building its C++ kernels) on its own
row. On a CPU, Inductor needs a C++ compiler (:func:`check_compiler`).
Source: https://docs.pytorch.org/docs/stable/generated/torch.compile.html.
"""

from __future__ import annotations

import shutil
from typing import Any

from ..errors import LLMOSError, UsageError

STATIC_CACHE_LEN = 512  # positions of the static KV cache of a compiled causal LM (prompt + answer)
MARK = "_llmos_compiled"


def check_compiler(device: str = "cpu") -> str | None:
    """The C++ compiler Inductor will use on the CPU (``None`` on a GPU, where Triton compiles).

    Raises:
        LLMOSError: no C++ compiler on the PATH (naming the fix).
    """
    if str(device).startswith("cuda"):
        return None
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise LLMOSError(
        "torch.compile on the cpu needs a C++ compiler and none is on the PATH; "
        "install one (`apt-get install g++`) or drop --compile"
    )


def is_compiled(model: Any) -> bool:
    """Whether :func:`compile_model` (or ``nn.Module.compile``) has compiled ``model``."""
    return bool(getattr(model, MARK, False) or getattr(model, "_compiled_call_impl", None) is not None)


def compile_model(model: Any, task: str) -> dict[str, Any]:
    """Compile ``model`` (in eval mode, on its device) for ``task``, in place.

    Args:
        model: a transformers model (a ``peft`` wrapper is refused: merge it first).
        task: ``seq-cls`` / ``embedding`` (the forward is compiled) or ``causal-lm`` (the
            decode step, with a static KV cache of :data:`STATIC_CACHE_LEN` positions).

    Returns:
        ``{"what": "forward" | "decode step (static cache)", "backend": "inductor",
        "compiler": the C++ compiler path or None}``.

    Raises:
        UsageError: the model is already compiled. LLMOSError: no C++ compiler on a CPU.
    """
    if is_compiled(model):
        raise UsageError("this model is already compiled; compile its uncompiled original instead")
    device = str(next(model.parameters()).device)
    compiler = check_compiler(device)
    if task == "causal-lm":
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
        config._compile_all_devices = True  # transformers compiles on CUDA only unless told (see the module docstring)
        gen = model.generation_config
        gen.cache_implementation = "static"
        gen.max_cache_len = STATIC_CACHE_LEN  # longer calls grow it (and recompile once)
        gen.compile_config = config
        what = f"decode step (static cache, {STATIC_CACHE_LEN} positions)"
    else:
        model.compile()
        what = "forward"
    setattr(model, MARK, True)
    return {"what": what, "backend": "inductor", "compiler": compiler}
