"""Custom kernels (Triton) and their registration into transformers.

``from llmos_jupyter.ops import flash_attention`` works, but nothing heavy is imported until a
name is used: importing this package does not import torch or triton. Set ``TRITON_INTERPRET=1``
before the first use to run the kernels on a CPU. See :mod:`llmos_jupyter.ops.attention`.
"""

from __future__ import annotations

import importlib

__all__ = ["flash_attention", "is_available", "register"]


def __getattr__(name: str):
    if name == "register":
        return importlib.import_module("llmos_jupyter.ops.registration").register
    if name in __all__:
        return getattr(importlib.import_module("llmos_jupyter.ops.attention"), name)
    raise AttributeError(f"module 'llmos_jupyter.ops' has no attribute {name!r}")
