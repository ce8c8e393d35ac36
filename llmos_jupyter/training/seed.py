"""Seeding every random number generator a run touches, and asking for deterministic kernels.

Used at the start of every fine-tuning run and by ``%llm seed N``. torch is imported inside
the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Iterator

from ..errors import UsageError, surface


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    Args:
        seed: a whole number, 0 ≤ seed < 2**32 (NumPy's limit).
        deterministic: also call ``torch.use_deterministic_algorithms(True, warn_only=True)``
            (ops without a deterministic kernel warn instead of failing), turn off cuDNN
            autotuning and set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when it is unset (cuBLAS needs
            it for reproducible matmuls; see https://docs.pytorch.org/docs/stable/notes/randomness.html).
            These are process-wide settings; :func:`deterministic_mode` restores them afterwards.

    Returns:
        The seed, for logging.

    Raises:
        UsageError: when ``seed`` is not a whole number in range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        example = "`%llm seed 0`" if surface() == "magic" else "seed(0)"
        raise UsageError(f"seed {seed!r} is not allowed: it must be a whole number in 0 .. 2**32-1; e.g. {example}")
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy comes with torch
        pass
    import torch

    torch.manual_seed(seed)  # seeds the CPU generator and every CUDA device's
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


@contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Within the block, torch uses deterministic algorithms (warn-only); afterwards the previous
    process-wide settings (``use_deterministic_algorithms``, cuDNN flags) come back."""
    import torch

    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
