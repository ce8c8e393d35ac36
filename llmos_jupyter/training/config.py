"""Fine-tuning settings: :class:`FinetuneConfig`, validated where it is built.

Pure Python (no torch import), so the magics can parse and check ``%llm finetune --epochs 0``
before anything heavy is loaded. Every bad value raises :class:`~llmos_jupyter.errors.UsageError`
with one line that names the option, the value and the fix (the way
``peft.LoraConfig.__post_init__`` does).

>>> FinetuneConfig(epochs=2, method="lora").lora_r
8
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..errors import UsageError, close_matches

TASKS = ("seq-cls", "causal-lm")
METHODS = ("full", "lora")
SCHEDULERS = ("linear", "constant")
# Metrics an evaluation reports per task, and whether greater is better (for ``metric_for_best``).
BEST_METRICS: dict[str, dict[str, bool]] = {
    "seq-cls": {"macro_f1": True, "accuracy": True, "loss": False},
    "causal-lm": {"loss": False, "perplexity": False},
}
DEFAULT_BEST_METRIC = {"seq-cls": "macro_f1", "causal-lm": "loss"}

# LoRA targets per ``config.model_type`` when ``target_modules`` is None: the attention query and
# value projections, as in the LoRA paper (Hu et al. 2021, §7.1: adapting W_q and W_v is enough).
# Anything not listed falls back to peft's own table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


# magic flags whose names are not the config field's (see magics/commands.py "finetune")
_FLAGS = {"early_stopping_patience": "--patience", "metric_for_best": "--metric"}


def flag_of(name: str) -> str:
    """The ``%llm finetune`` flag of config field ``name``: ``lora_r`` → ``--lora-r``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (defaults follow BERT fine-tuning practice, HF Trainer).

    Args:
        epochs: whole passes over the training set (default 1, ≥ 1).
        lr: peak learning rate of AdamW (default 5e-5; Devlin et al. 2019 use 2e-5…5e-5 for BERT).
            For LoRA, 1e-4…1e-3 is typical.
        batch_size: rows per forward pass (default 32). Effective batch = batch_size × grad_accum.
        max_length: tokens kept per row, including special tokens (default 128). Longer rows are
            truncated. 128 covers a whole sentence or short review (Rotten Tomatoes: mean 27,
            max 78 MiniLM tokens) while bounding the cost of the rare long row; attention cost
            grows with length², and batches are padded only to their own longest row anyway.
        seed: seeds Python, NumPy and torch at the start of the run, the batch order and a
            never-trained classification head (default 0; 0 ≤ seed < 2**32).
        weight_decay: decoupled weight decay of AdamW (default 0.01; not applied to biases and
            normalisation weights). Source: Loshchilov & Hutter 2019, "Decoupled Weight Decay
            Regularization", https://arxiv.org/abs/1711.05101.
        warmup_ratio: fraction of optimizer steps with a linear warmup from 0 (default 0.06,
            RoBERTa's value; Liu et al. 2019). 0 ≤ warmup_ratio < 1.
        lr_scheduler: "linear" (warmup, then linear decay to 0 at the last step; default) or
            "constant" (warmup, then flat).
        grad_accum: micro-batches per optimizer step (default 1).
        max_grad_norm: clip the global gradient L2 norm to this value (default 1.0, as HF Trainer);
            None turns clipping off.
        max_steps: stop after this many optimizer steps (default None: run all epochs).
        eval_every: evaluate on the eval set every this many optimizer steps, or ``"epoch"``: at
            the end of every epoch (HF Trainer's ``eval_strategy="epoch"``) (default None: only
            at the end).
        early_stopping_patience: stop after this many evaluations in a row without improving
            ``metric_for_best`` (default None: never stop early). Needs ``eval_every`` and an
            eval set. Turns on best-model tracking.
        metric_for_best: the evaluation metric that picks the best checkpoint: seq-cls
            "macro_f1" (default), "accuracy" (greater is better) or "loss"; causal-lm "loss"
            (default) or "perplexity" (lower is better). Setting it (or the patience) turns on
            best-model tracking: the best weights seen at any evaluation (every ``eval_every``
            steps and the final one) are kept and loaded back into the model at the end; the
            result's metrics are the best evaluation's, with ``best_step`` / ``best_epoch``.
            Needs ``eval_every``.
        group_by_length: batch rows of similar token length together (seeded), which cuts the
            padding per batch (default True).
        deterministic: ask torch for deterministic kernels during the run
            (``torch.use_deterministic_algorithms(True, warn_only=True)``; default True).
        method: "full" (every weight is trained) or "lora" (low-rank adapters via peft; the
            classification head is trained and saved too).
        lora_r: rank r of the LoRA update ΔW = B·A, A: (r, d_in), B: (d_out, r) (default 8).
        lora_alpha: LoRA scaling numerator; ΔW is scaled by lora_alpha / lora_r (default 16).
        lora_dropout: dropout on the LoRA input (default 0.05; 0 ≤ p < 1).
        target_modules: module names that get adapters (default None: per architecture, BERT
            ``["query", "value"]``, Llama ``["q_proj", "v_proj"]``; see ``DEFAULT_TARGET_MODULES``).
        task: "seq-cls" (sequence classification) or "causal-lm" (supervised fine-tuning on
            prompt/response pairs, loss on the response tokens only; see ``training/sft.py``).

    Raises:
        UsageError: one line naming the option, the value given and the fix.
    """

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    lr_scheduler: str = "linear"
    grad_accum: int = 1
    max_grad_norm: Optional[float] = 1.0
    max_steps: Optional[int] = None
    eval_every: Optional[Union[int, str]] = None
    early_stopping_patience: Optional[int] = None
    metric_for_best: Optional[str] = None
    group_by_length: bool = True
    deterministic: bool = True
    method: str = "full"
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    target_modules: Optional[Union[list[str], str]] = None
    task: str = "seq-cls"

    def __post_init__(self) -> None:
        fields = set(self.__dataclass_fields__)

        def bad(name: str, want: str, fix: str) -> UsageError:
            # name the Python keyword and the magic's flag ("epochs=0 (--epochs)"); the fix in flags
            fix = re.sub(
                r"\b(\w+)=(\S+)",
                lambda m: f"{flag_of(m.group(1))} {m.group(2)}" if m.group(1) in fields else m.group(0),
                fix,
            ).replace("pass ", "use ")
            return UsageError(f"{name}={getattr(self, name)!r} ({flag_of(name)}) is not allowed: {want}; {fix}")

        for name in ("epochs", "batch_size", "max_length", "grad_accum", "lora_r"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise bad(name, "it must be a whole number >= 1", f"pass e.g. {name}={_DEFAULTS[name]}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise bad("seed", "it must be a whole number in 0 .. 2**32-1", "pass e.g. seed=0")
        if not _is_num(self.lr) or self.lr <= 0:
            raise bad("lr", "it must be a number > 0", "pass e.g. lr=5e-5 for a full fine-tune, lr=2e-4 for LoRA")
        if not _is_num(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "it must be a number >= 0", "pass e.g. weight_decay=0.01")
        if not _is_num(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "it is a fraction of the steps, 0 <= r < 1", "pass e.g. warmup_ratio=0.06")
        if self.max_grad_norm is not None and (not _is_num(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise bad(
                "max_grad_norm", "it must be a number > 0 or None", "pass max_grad_norm=1.0, or None for no clipping"
            )
        for name in ("max_steps", "eval_every"):
            v = getattr(self, name)
            if name == "eval_every" and v == "epoch":
                continue
            if v is not None and (not _is_int(v) or v < 1):
                raise bad(
                    name,
                    "it must be a whole number of optimizer steps >= 1"
                    + (", 'epoch'" if name == "eval_every" else "")
                    + " or None",
                    f"pass e.g. {name}=50, or leave it out",
                )
        if not _is_num(self.lora_alpha) or self.lora_alpha <= 0:
            raise bad("lora_alpha", "it must be a number > 0", "pass e.g. lora_alpha=16 (often 2 x lora_r)")
        if not _is_num(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "it is a probability, 0 <= p < 1", "pass e.g. lora_dropout=0.05")
        for name, choices in (("method", METHODS), ("task", TASKS), ("lr_scheduler", SCHEDULERS)):
            v = getattr(self, name)
            if v not in choices:
                raise UsageError(
                    f"{name}={v!r} is not allowed{close_matches(v, choices)}; use one of: {', '.join(choices)}"
                )
        v = self.early_stopping_patience
        if v is not None and (not _is_int(v) or v < 1):
            raise bad(
                "early_stopping_patience",
                "it must be a whole number of evaluations >= 1, or None",
                "pass e.g. early_stopping_patience=3",
            )
        if self.metric_for_best is not None:
            allowed = list(BEST_METRICS[self.task])
            if self.metric_for_best not in allowed:
                raise UsageError(
                    f"metric_for_best={self.metric_for_best!r} is not a {self.task} "
                    f"metric{close_matches(str(self.metric_for_best), allowed)}; use one of: {', '.join(allowed)}"
                )
        if self.track_best and self.eval_every is None:
            which = "early_stopping_patience" if self.early_stopping_patience is not None else "metric_for_best"
            raise UsageError(
                f"{which} ({flag_of(which)}) needs periodic evaluation; add --eval-every N (optimizer steps) "
                f"or --eval-every epoch (eval_every= in Python)"
            )
        for name in ("group_by_length", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "it must be True or False", f"pass {name}=True")
        tm = self.target_modules
        if tm is not None:
            if isinstance(tm, str):
                if not tm.strip():
                    raise bad("target_modules", "it is empty", "pass None for the default or e.g. ['query', 'value']")
            elif isinstance(tm, (list, tuple)) and tm and all(isinstance(t, str) and t for t in tm):
                self.target_modules = list(tm)
            else:
                raise bad(
                    "target_modules",
                    "it must be a non-empty list of module names",
                    "pass None for the default or e.g. ['query', 'value']",
                )
            if self.method != "lora":
                raise UsageError(
                    f"target_modules={tm!r} only applies to method='lora' (method={self.method!r}); pass "
                    "method='lora' or drop target_modules"
                )

    @property
    def track_best(self) -> bool:
        """True when the best checkpoint is kept (``early_stopping_patience`` or ``metric_for_best`` set)."""
        return self.early_stopping_patience is not None or self.metric_for_best is not None

    def best_metric(self) -> tuple[str, bool]:
        """(metric name, greater is better) used to pick the best checkpoint for this task."""
        name = self.metric_for_best or DEFAULT_BEST_METRIC[self.task]
        return name, BEST_METRICS[self.task][name]

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (for manifests and the run registry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneConfig":
        """Build from a dict (e.g. parsed magic flags).

        Raises:
            UsageError: on an unknown key (with the closest known ones) or a bad value.
        """
        if isinstance(d, cls):
            return d
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise UsageError(
                    f"unknown fine-tuning option {k!r}{close_matches(k, names)}; see help(FinetuneConfig) for the "
                    "options"
                )
        return cls(**d)

    def resolve_target_modules(self, model_type: str) -> Union[list[str], str]:
        """LoRA target modules for ``model_type`` (``config.model_type``): the configured ones, else
        ``DEFAULT_TARGET_MODULES``, else peft's table.

        Raises:
            UsageError: when neither table knows the architecture.
        """
        if self.target_modules is not None:
            return self.target_modules
        if model_type in DEFAULT_TARGET_MODULES:
            return list(DEFAULT_TARGET_MODULES[model_type])
        try:  # peft's table covers many more architectures
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table
        except ImportError:  # pragma: no cover - peft is a dependency
            table = {}
        if model_type in table:
            return list(table[model_type])
        raise UsageError(
            f"no default LoRA target_modules for model_type {model_type!r}; pass target_modules=[...] with the "
            "attention projection names (see print(model))"
        )


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
