"""Training layer: fine-tuning (full and LoRA; seq-cls and causal-lm SFT), evaluation, export,
seeding and the run registry.

Importing this package is cheap (NumPy and the standard library): torch, transformers, datasets
and peft are imported inside the functions that need them.

    from llmos_jupyter.training import FinetuneConfig, finetune, evaluate, RunRegistry

Note: the functions ``finetune`` and ``evaluate`` shadow their submodules as attributes of this
package; reach the modules with ``from llmos_jupyter.training.evaluate import EvalResult``.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint
from .config import FinetuneConfig
from .evaluate import EvalResult, classification_metrics, evaluate
from .export import export_model
from .finetune import FinetuneResult, check_lora_targets, finetune
from .runs import Run, RunRegistry
from .seed import seed_everything
from .sft import LMEvalResult, evaluate_causal_lm

__all__ = [
    "EvalResult",
    "FinetuneConfig",
    "FinetuneResult",
    "LMEvalResult",
    "Run",
    "RunRegistry",
    "check_lora_targets",
    "classification_metrics",
    "evaluate",
    "evaluate_causal_lm",
    "export_model",
    "finetune",
    "load_checkpoint",
    "seed_everything",
]
