"""Training layer: fine-tuning (full and LoRA), evaluation, seeding and the run registry.

Importing this package is cheap (NumPy and the standard library): torch, transformers, datasets
and peft are imported inside the functions that need them.

    from llmos_jupyter.training import FinetuneConfig, finetune, evaluate, RunRegistry

Note: the functions ``finetune`` and ``evaluate`` shadow their submodules as attributes of this
package; reach the modules with ``from llmos_jupyter.training.evaluate import EvalResult``.
"""
from __future__ import annotations

from .config import FinetuneConfig
from .evaluate import EvalResult, classification_metrics, evaluate
from .finetune import FinetuneResult, finetune, load_checkpoint
from .runs import Run, RunRegistry
from .seed import seed_everything

__all__ = [
    "EvalResult",
    "FinetuneConfig",
    "FinetuneResult",
    "Run",
    "RunRegistry",
    "classification_metrics",
    "evaluate",
    "finetune",
    "load_checkpoint",
    "seed_everything",
]
