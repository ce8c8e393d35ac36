"""Fine-tune a sequence classifier or a causal LM (full or LoRA) on a ``datasets.Dataset``, CPU or GPU.

One public function, :func:`finetune`: tokenise once (cached), seeded length-grouped batches
padded per batch, AdamW with linear warmup/decay, gradient clipping, periodic evaluation, cancel
at step boundaries, and a safetensors checkpoint written atomically. It reads in five parts:

1. the plan (:func:`_plan` → :class:`_Plan`): every check, the tokenised data and the step
   totals, before anything is trained or written;
2. the state (:class:`_State`): step, losses, evaluation history, the best evaluation;
3. one optimizer step (:func:`_train_step`, shared with the ranks of a distributed run), driven
   by :class:`_Run` (set-up, epochs, evaluation, the end of the run);
4. the checkpoint (:meth:`_Run._save`, written by :func:`.checkpoint.save_checkpoint`);
5. the result (:class:`FinetuneResult`).

What differs between seq-cls and causal-lm (checks, tokenising, batching, loss, evaluation) is
one task object from :mod:`.tasks`, chosen once per run.

Reproducibility (same seed, same result): the run seeds every RNG at its start and
re-initialises a classification head that no run has trained yet from the run seed, so the result
depends on (starting weights, data, config) only — not on what the RNGs did before the call.

LoRA (the head of a LoRA classifier is trained, saved and reloaded): adapters come from peft
with ``task_type=SEQ_CLS``, which puts the head (``classifier`` / ``score``) in
``modules_to_save``: it is trained and saved in ``adapter_model.safetensors`` next to the adapters.

Run it::

    from llmos_jupyter.training import FinetuneConfig, finetune
    res = finetune(model, tok, train_ds, eval_ds, text_column="text", label_column="label",
                   config=FinetuneConfig(epochs=1), run_dir="runs/demo")
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..display import Rendered, kv_html
from ..errors import UsageError
from ..pull import sha256_file  # noqa: F401  (re-exported: checkpoints are hashed the same way as pulls)
from .batching import length_grouped_batches, pad_id_for
from .checkpoint import is_peft as _is_peft
from .checkpoint import load_training_state, load_weights, read_resume_state, save_checkpoint, save_training_state
from .config import FinetuneConfig
from .distributed import rank_seed
from .resume import capture_rng, check_resume, model_fingerprint, restore_rng, train_digest
from .seed import deterministic_mode, seed_everything
from .tasks import task_for

STATUSES = ("completed", "interrupted", "failed", "diverged")
# Top-level module names of classification heads in transformers (BERT/RoBERTa/DeBERTa "classifier",
# DistilBERT "pre_classifier", Llama/Qwen/GPT-2 "score"); used when a model carries no load record.
HEAD_MODULES = ("classifier", "pre_classifier", "score")


@dataclass
class FinetuneResult(Rendered):
    """What one :func:`finetune` call did.

    Attributes:
        status: "completed", "interrupted" (stopped at a step boundary by ``should_stop`` or
            Ctrl-C / KeyboardInterrupt) or "diverged" (a non-finite loss or gradient: the weights
            were put back as they were before the run, nothing was saved; see ``diverged_step``).
        steps: optimizer steps taken; total_steps: steps planned.
        epochs: epochs done, fractional (steps / steps per epoch).
        train_loss: mean training cross-entropy (nats per row) of each optimizer step.
        samples_per_s: training rows per second of training-loop time (evaluation excluded).
        tokens_per_s: real (non-pad) training tokens per second; padded_fraction: share of the
            positions run through the model that were padding.
        wall_s: seconds for the whole call (tokenising, evaluation and saving included).
        peak_rss_bytes: largest resident set size of the process seen during the run (psutil).
        peak_device_bytes: ``torch.cuda.max_memory_allocated`` on a CUDA model, else None.
        metrics: the final evaluation's headline numbers (seq-cls: accuracy, macro_f1, loss, n;
            causal-lm: loss, perplexity, n, tokens), {} without an eval set; eval: the final
            :class:`EvalResult` (causal-lm: :class:`~.sft.LMEvalResult`); eval_history: one dict per evaluation
            (step, epoch and the metrics).
        checkpoint: the checkpoint directory (``run_dir/checkpoint``) or None without ``run_dir``;
            checkpoint_sha256: sha256 of its weights file (``model.safetensors``, or
            ``adapter_model.safetensors`` for LoRA).
        head_reinitialized: parameter names re-initialised from the seed before training.
        best_step / best_epoch / best_value: with best-model tracking (``early_stopping_patience``
            or ``metric_for_best``), the evaluation whose weights were loaded back at the end
            and its ``metric_for_best`` value (also in ``metrics``); else None.
        stopped_early: True when ``early_stopping_patience`` ended the run (status "completed").
        resumed_from: the checkpoint a resumed run continued from, else None.
        trainable_params / total_params: parameter counts.
        model: the trained model (for LoRA the ``peft.PeftModel`` wrapping the given model).
    """

    status: str
    steps: int
    total_steps: int
    epochs: float
    train_loss: list[float]
    samples_per_s: float
    tokens_per_s: float
    padded_fraction: float
    wall_s: float
    peak_rss_bytes: int
    peak_device_bytes: Optional[int]
    metrics: dict[str, Any]
    eval: Optional[Any]  # EvalResult (seq-cls) or sft.LMEvalResult (causal-lm)
    eval_history: list[dict[str, Any]]
    checkpoint: Optional[Path]
    checkpoint_sha256: Optional[str]
    config: FinetuneConfig
    data_fingerprint: Optional[str]
    run_id: Optional[str]
    head_reinitialized: list[str]
    trainable_params: int
    total_params: int
    model: Any = field(default=None, repr=False)
    best_step: Optional[int] = None
    best_epoch: Optional[float] = None
    best_value: Optional[float] = None
    stopped_early: bool = False
    resumed_from: Optional[str] = None
    diverged_step: Optional[int] = None  # the optimizer step whose loss or gradient was not finite

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (no model, no arrays)."""
        return {
            "status": self.status,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "epochs": self.epochs,
            "final_train_loss": self.train_loss[-1] if self.train_loss else None,
            "samples_per_s": self.samples_per_s,
            "tokens_per_s": self.tokens_per_s,
            "padded_fraction": self.padded_fraction,
            "wall_s": self.wall_s,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_device_bytes": self.peak_device_bytes,
            "metrics": self.metrics,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "method": self.config.method,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
        }

    def __str__(self) -> str:
        s = self.summary()
        loss = f"{s['final_train_loss']:.4f}" if s["final_train_loss"] is not None else "-"
        lines = [
            f"fine-tune {self.status}: {self.steps}/{self.total_steps} steps, {self.epochs:.2f} epochs, "
            f"train loss {loss}, {self.samples_per_s:.1f} samples/s, {self.wall_s:.1f} s"
        ]
        if self.metrics:
            lines.append(
                "eval: "
                + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.metrics.items())
            )
        if self.checkpoint:
            lines.append(f"checkpoint: {self.checkpoint} (sha256 {self.checkpoint_sha256[:12]}…)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [(k, v) for k, v in self.summary().items() if k != "metrics"]
        rows += [(f"eval {k}", v) for k, v in self.metrics.items()]
        return kv_html(rows, "llmos-finetune")


# ---------------------------------------------------------------------------------------------
# head initialisation (same seed, same result)


def untrained_head_params(model: Any) -> list[str]:
    """Names of parameters that no checkpoint and no llmos run has set: their values are the
    random initialisation made when the model object was built.

    transformers (≥ 5) marks every parameter it loads from a checkpoint with
    ``_is_hf_initialized``; the ones missing from the checkpoint (the new classification head)
    are unmarked. A model built from a config carries no marks at all; then the head modules
    (``HEAD_MODULES``) count as untrained. Parameters trained by :func:`finetune` are marked
    ``_llmos_trained`` and never count.
    """
    params = list(model.named_parameters())
    loaded = any(getattr(p, "_is_hf_initialized", False) for _, p in params)
    out = []
    for name, p in params:
        if getattr(p, "_llmos_trained", False) or ".original_module." in name:
            # peft's modules_to_save keeps the head's pre-LoRA copy as ``original_module``; the
            # model uses (and a LoRA run trains) ``modules_to_save.default`` instead
            continue
        if loaded:
            if not getattr(p, "_is_hf_initialized", False):
                out.append(name)
        elif name.split(".")[0] in HEAD_MODULES:
            out.append(name)
    return out


def reinit_untrained_head(model: Any, seed: int) -> list[str]:
    """Re-initialise :func:`untrained_head_params` of ``model`` from ``seed``, in place.

    Uses a private ``torch.Generator`` seeded with ``seed`` (the global RNGs are neither read nor
    changed), drawing on the CPU in parameter order, so the values depend on ``seed`` and the
    architecture only. Linear / Embedding weights ~ N(0, config.initializer_range²) (0.02 when
    the config has none; the BERT/Llama scheme, ``PreTrainedModel._init_weights``), biases 0,
    LayerNorm weights 1. Other modules fall back to the model's own ``_init_weights`` under a
    forked, seeded global RNG.

    Returns:
        The names of the parameters re-initialised.
    """
    import torch
    from torch import nn

    names = untrained_head_params(model)
    if not names:
        return []
    wanted = set(names)
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02) or 0.02)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    done: list[str] = []
    with torch.no_grad():
        for mname, mod in model.named_modules():
            own = [(f"{mname}.{pn}" if mname else pn, p) for pn, p in mod.named_parameters(recurse=False)]
            own = [(n, p) for n, p in own if n in wanted]
            if not own:
                continue
            if isinstance(mod, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                for n, p in own:
                    leaf = n.rsplit(".", 1)[-1]
                    if isinstance(mod, nn.LayerNorm):
                        p.fill_(1.0 if leaf == "weight" else 0.0)
                    elif leaf == "bias":
                        p.zero_()
                    else:
                        p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=g).to(p.dtype))
                        if isinstance(mod, nn.Embedding) and mod.padding_idx is not None:
                            p[mod.padding_idx].zero_()
            elif hasattr(model, "_init_weights"):
                sub_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
                devices = [p.device.index or 0 for _, p in own if p.device.type == "cuda"]
                with torch.random.fork_rng(devices=sorted(set(devices))):
                    torch.manual_seed(sub_seed)
                    model._init_weights(mod)
            else:  # pragma: no cover - every transformers model has _init_weights
                continue
            done.extend(n for n, _ in own)
    return done


# ---------------------------------------------------------------------------------------------
# helpers


class _Callback:
    """Calls the optional methods of a progress callback; a callback that raises (other than
    KeyboardInterrupt) is reported once and switched off, so a broken display never kills a run."""

    def __init__(self, cb: Any):
        self.cb = cb

    def __call__(self, name: str, *args: Any) -> None:
        fn = getattr(self.cb, name, None) if self.cb is not None else None
        if fn is None:
            return
        try:
            fn(*args)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - a display must not stop training
            warnings.warn(
                f"progress callback {name} failed ({type(e).__name__}: {e}); training continues without it",
                RuntimeWarning,
                stacklevel=2,
            )
            self.cb = None


@contextlib.contextmanager
def _sigint_stops(flag: threading.Event) -> Iterator[None]:
    """In the main thread, turn the first Ctrl-C (SIGINT; a Jupyter "interrupt kernel") into a
    stop request honoured at the next step boundary; a second one raises KeyboardInterrupt at
    once. Elsewhere (a background job thread) this does nothing: use ``should_stop``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        prev = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    try:
        signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # pragma: no cover - not allowed here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev if prev is not None else signal.default_int_handler)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weights, none on biases and normalisation weights (as HF
    Trainer and BERT)."""
    no_decay: set[int] = set()
    for mod in model.modules():
        is_norm = "norm" in type(mod).__name__.lower()
        for pname, p in mod.named_parameters(recurse=False):
            if is_norm or pname.endswith("bias"):
                no_decay.add(id(p))
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, total: int, warmup: int, kind: str = "linear") -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based), as
    ``transformers.get_linear_schedule_with_warmup``: step/warmup during warmup, then
    (total - step)/(total - warmup) ("linear") or 1 ("constant")."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def check_lora_targets(model: Any, config: FinetuneConfig | dict[str, Any]) -> list[str]:
    """Check, before anything is written, that LoRA ``target_modules`` match modules of ``model``.

    A name matches a module whose qualified name equals it or ends with ``"." + name`` (peft's
    rule for a list; a string is a regular expression and is checked with ``re.fullmatch``).
    A ``peft.PeftModel`` (continuing a LoRA run) passes.

    Returns:
        The qualified names of the matched modules.

    Raises:
        UsageError: no module matches; the message lists the model's linear layer names.
    """
    import re

    from torch import nn

    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config or {})
    if _is_peft(model):
        return []
    targets = cfg.resolve_target_modules(getattr(model.config, "model_type", ""))
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        hit = [n for n in names if re.fullmatch(targets, n)]
    else:
        hit = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    if not hit:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        from ..errors import opt

        raise UsageError(
            f"LoRA target_modules={targets!r} match no module of this {type(model).__name__}; "
            f"pass {opt('target_modules')} from its linear layers: {', '.join(leaves) or '(none)'}"
        )
    return hit


def _wrap_lora(model: Any, cfg: FinetuneConfig) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    if _is_peft(model):
        return model  # continue training its adapters (and its head)
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise UsageError(
            "this model already carries LoRA adapters from an earlier run (a re-run cell?); pass result.model to "
            "keep training them, or reload the base model"
        )
    targets = cfg.resolve_target_modules(getattr(model.config, "model_type", ""))
    task_type = TaskType.CAUSAL_LM if cfg.task == "causal-lm" else TaskType.SEQ_CLS
    lc = LoraConfig(
        task_type=task_type,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
    )
    from ..models.loading import quiet_transformers

    try:
        with quiet_transformers():
            return get_peft_model(model, lc)
    except ValueError as e:  # peft's NoMatchingPeftModuleError is a ValueError
        if "not found" in str(e) or "Target module" in str(e) or "No modules were targeted" in str(e):
            from torch import nn

            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise UsageError(
                f"target_modules={targets!r} match no module of this {type(model).__name__}; pass target_modules= "
                f"from its linear layers: {', '.join(leaves)}"
            ) from None
        raise


# ---------------------------------------------------------------------------------------------
# divergence: a non-finite loss or gradient ends the run; the weights go back to where they were


def _weights_before(model: Any, method: str) -> dict[str, Any]:
    """CPU copies of the parameters a run may change, taken before it changes any: every trainable
    weight for a full fine-tune or a LoRA model being continued; for a fresh LoRA run only the
    classification head (peft trains a copy of it; the base is frozen and the adapters are new).
    Costs one copy of those weights in CPU memory for the length of the run."""
    fresh_lora = method == "lora" and not _is_peft(model)
    heads = set(untrained_head_params(model)) if fresh_lora else set()

    def changes(n: str, p: Any) -> bool:
        return (n in heads or n.split(".")[0] in HEAD_MODULES) if fresh_lora else p.requires_grad

    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if changes(n, p)}


EXPLODED_LOSS = 100.0  # nats per row (per response token for causal-lm): the right answer got p < e^-100


def _finite(loss: float, grad_norm: Any, first_loss: Optional[float] = None) -> bool:
    """True while a step is sane: loss and gradient norm finite, and the loss not exploded —
    above both :data:`EXPLODED_LOSS` and 10x the run's first loss (a learning rate far too high
    can blow the loss up to 1e23 without ever reaching inf)."""
    loss, norm = float(loss), float(grad_norm)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        return False
    return not (loss > EXPLODED_LOSS and (first_loss is None or loss > 10 * first_loss))


def _put_back(model: Any, before: dict[str, Any], wrapped_here: bool) -> Any:
    """Undo a diverged run: remove the LoRA layers this run added (peft ``unload``), then copy
    :func:`_weights_before` back. Returns the model the caller keeps."""
    import torch

    if wrapped_here and _is_peft(model):
        model = model.unload()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in before.items():
            if n in params:
                params[n].copy_(t.to(params[n].device))
    return model


# ---------------------------------------------------------------------------------------------
# one optimizer step (shared by the one-process and the distributed runs)


def _loss_module(model: Any, task: Any) -> Any:
    """A module around ``model`` whose forward ``(input_ids, attention_mask, labels)`` returns the
    batch's *summed* loss (``task.loss_sum``: seq-cls cross-entropy over rows, causal-lm
    cross-entropy over response tokens, :func:`~.sft.response_loss_sum`). DDP wraps this module,
    so the whole loss computation runs inside its forward (gradient hooks armed) whatever the task.
    ``task``: a :mod:`.tasks` object, or True / False for causal-lm / seq-cls."""
    from torch import nn

    task = task_for(task)

    class LossSum(nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.model = inner

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
            return task.loss_sum(self.model, input_ids, attention_mask, labels)

    return LossSum(model)


def _train_step(
    fwd: Any,
    model: Any,
    group: list[Any],
    tok: Any,
    lengths: Any,
    labels: Any,
    pad_id: int,
    device: Any,
    task: Any,
    dist: Any = None,
) -> tuple[float, int, int, int, Any]:
    """Forward and backward of one optimizer step over ``group`` (its micro-batches, each a
    ``(B,)`` array of global row indices); gradients accumulate in the parameters' ``.grad``.

    The step's loss is the mean over the rows (seq-cls) or response tokens (causal-lm) of the
    whole global group: each micro-batch's summed loss (``fwd``, see :func:`_loss_module`) is
    divided by that global count (``task.count``; ``task`` as for :func:`_loss_module`). With
    ``dist`` (a :class:`~.distributed.RankGroup`) this rank
    runs only its slice of each micro-batch and the loss is multiplied by the world size, because
    DDP/FSDP average gradients over ranks; the all-reduced gradient is then the global mean's,
    whatever the slice sizes. A rank with an empty slice runs the first row with weight 0 so it
    still joins the all-reduce. Micro-batches before the last one skip the gradient all-reduce.

    Returns:
        (step loss = global mean, same on every rank; global rows; this rank's real tokens;
        this rank's padded positions; this rank's last micro-batch ``(input_ids (B, L),
        attention_mask (B, L), labels)`` on the device, for the loop's check of the final weights).
    """
    task = task_for(task)
    n_rows = sum(len(rows) for rows in group)
    denom = max(task.count(tok, group), 1)
    world = dist.world_size if dist is not None else 1
    step_loss, real_tokens, padded_tokens = 0.0, 0, 0
    for i, rows in enumerate(group):
        weight = 1.0
        if dist is not None:
            rows = dist.shard(rows)
            if len(rows) == 0:
                rows, weight = group[i][:1], 0.0
        b = task.collate(tok, rows, pad_id, labels)
        ids = b["input_ids"].to(device, non_blocking=True)  # (B, L)
        mask = b["attention_mask"].to(device, non_blocking=True)  # (B, L)
        y = b["labels"].to(device, non_blocking=True)  # seq-cls (B,); causal-lm (B, L)
        skip_sync = dist is not None and i < len(group) - 1
        with dist.no_sync(fwd, model, skip_sync) if dist is not None else contextlib.nullcontext():
            loss = fwd(ids, mask, y) / denom
            step_loss += float(loss.detach()) * weight
            if world != 1:
                loss = loss * (world * weight)
            loss.backward()
        if weight:
            real_tokens += int(lengths[rows].sum())
            padded_tokens += ids.numel()
    if dist is not None:
        step_loss = dist.sum(step_loss)
    return step_loss, n_rows, real_tokens, padded_tokens, (ids, mask, y)


# ---------------------------------------------------------------------------------------------
# the plan: every check, the tokenised data and the step totals, before anything is trained


@dataclass
class _Plan:
    """What a run will do, fixed before anything is trained or written."""

    cfg: FinetuneConfig
    task: Any  # tasks.SeqCls or tasks.CausalLM
    device: Any
    pad_id: int
    tok: Any  # the tokenised training rows (batching.Tokenized or sft.SFTTokenized)
    labels: Any  # (N,) class ids for seq-cls, None for causal-lm
    steps_per_epoch: int
    total_steps: int
    warmup: int  # warmup steps
    eval_every: Optional[int]  # optimizer steps between evaluations, or None
    fingerprint: Optional[str]  # the training dataset's own fingerprint
    model_fp: str
    digest: str  # of the tokenised training data
    rstate: Optional[dict[str, Any]]  # trainer_state.json of the checkpoint resumed from

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


def _plan(
    model: Any,
    tokenizer: Any,
    train: Any,
    eval: Any,
    cfg: FinetuneConfig,
    task: Any,  # noqa: A002
    resume_from: Optional[os.PathLike | str],
) -> _Plan:
    """Check the model, data and config (one UsageError / NotFoundError line each, before anything
    changes except ``model.config.pad_token_id``), tokenise the training set and count the steps."""
    import torch

    if cfg.method == "full" and _is_peft(model):
        raise UsageError(
            "method='full' was given a LoRA (peft) model; pass method='lora' to keep training its "
            "adapters, or merge them first with model.merge_and_unload()"
        )
    labels = task.check(model, train, eval)
    if cfg.method == "lora":
        check_lora_targets(model, cfg)
    first = next(model.parameters())
    if cfg.method == "full" and first.dtype == torch.float16:
        raise UsageError(
            "a full fine-tune of float16 weights diverges without loss scaling; load the model with "
            "dtype=float32 or bfloat16, or use method='lora'"
        )
    mconf = model.config
    if getattr(tokenizer, "pad_token_id", None) is not None and getattr(mconf, "pad_token_id", None) is None:
        mconf.pad_token_id = tokenizer.pad_token_id
    pad_id = pad_id_for(tokenizer, mconf)
    tok = task.tokenize(tokenizer, train, cfg.max_length)
    steps_per_epoch = math.ceil(math.ceil(len(tok) / cfg.batch_size) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    digest = train_digest(tok, labels)
    plan = _Plan(
        cfg=cfg,
        task=task,
        device=first.device,
        pad_id=pad_id,
        tok=tok,
        labels=labels,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup=math.ceil(cfg.warmup_ratio * total_steps),
        eval_every=steps_per_epoch if cfg.eval_every == "epoch" else cfg.eval_every,
        fingerprint=getattr(train, "_fingerprint", None),
        model_fp=model_fingerprint(model),
        digest=digest,
        rstate=None,
    )
    if cfg.track_best and eval is None:
        raise UsageError(
            "early_stopping_patience / metric_for_best need an eval set; pass eval= (a test or validation split)"
        )
    if resume_from is not None:  # every check before anything is trained or written
        plan.rstate = read_resume_state(resume_from)
        check_resume(plan.rstate, config=cfg.to_dict(), model_fp=plan.model_fp, data_digest=digest)
    return plan


# ---------------------------------------------------------------------------------------------
# the state of a run while it trains


@dataclass
class _State:
    """What changes while a run trains. ``best`` (JSON-safe) goes to ``trainer_state.json``;
    ``best_w`` holds the best evaluation's trainable weights (CPU copies)."""

    best: dict[str, Any]
    peak_rss: int
    step: int = 0
    start_step: int = 0  # where this call began (a resumed run's step)
    samples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    train_s: float = 0.0  # seconds in the training loop, evaluation excluded
    status: str = "completed"
    losses: list[float] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: Any = None
    best_w: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    diverged_step: Optional[int] = None
    resumable: bool = True  # False while an optimizer update is under way
    rng_at_step: Optional[dict[str, Any]] = None  # RNG states at the start of the step in progress
    failure: Optional[BaseException] = None  # distributed: a collective failed (a rank died) at a step boundary
    last_batch: Any = None  # this rank's last micro-batch on the device (the final-weights check)


# ---------------------------------------------------------------------------------------------
# the loop


def finetune(
    model: Any,
    tokenizer: Any,
    train: Any,
    eval: Any = None,  # noqa: A002 - the public name the API uses
    *,
    text_column: str = "text",
    label_column: str = "label",
    config: Optional[FinetuneConfig | dict[str, Any]] = None,
    callback: Any = None,
    run_dir: Optional[os.PathLike | str] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    run_id: Optional[str] = None,
    prompt_column: str = "prompt",
    response_column: str = "response",
    resume_from: Optional[os.PathLike | str] = None,
    dist: Any = None,
) -> FinetuneResult:
    """Fine-tune ``model`` for sequence classification (``config.task="seq-cls"``) or supervised
    fine-tune a causal LM on prompt/response pairs (``task="causal-lm"``) on ``train``; evaluate
    on ``eval``.

    causal-lm (see :mod:`.sft`): prompts rendered with the tokenizer's chat template, the loss
    masked to the response tokens (labels -100 elsewhere), batches padded to their own longest
    row; ``train_loss`` is then nats per response token and the evaluation reports loss and
    perplexity. ``prompt_column`` / ``response_column`` name the columns (defaults "prompt",
    "response"); ``text_column`` / ``label_column`` are not used.

    Args:
        model: a transformers ``*ForSequenceClassification`` model (or a ``peft.PeftModel`` from
            an earlier LoRA run, to continue training it), on its device. Trained in place; left
            in eval mode on return, on error and on interrupt. With ``method="lora"`` the given
            model gets adapters injected (peft) and ``result.model`` is the PeftModel.
        tokenizer: its tokenizer. If it has a pad token and ``model.config.pad_token_id`` is None,
            the latter is set (needed by Llama-type classifiers to find each row's last token).
        train: ``datasets.Dataset`` with ``text_column`` (strings; None/NaN count as "") and
            ``label_column`` (class ids 0..C-1 matching ``model.config.label2id``).
        eval: optional ``datasets.Dataset`` of the same shape; evaluated every
            ``config.eval_every`` steps and at the end (:func:`~.evaluate.evaluate`).
        config: :class:`FinetuneConfig` or a dict of its fields (default: all defaults).
        callback: optional object with any of ``on_begin(total_steps, total_samples, run_id)``,
            ``on_step(step, loss, lr, samples_per_s, eta_s)``, ``on_eval(step, epoch, metrics)``,
            ``on_end(status, result)`` (e.g. ``llmos_jupyter.widgets.progress.TrainingProgress``);
            called from the training thread at every step (it must throttle its own drawing).
            ``on_end("failed", None)`` is called before an error propagates.
        run_dir: where the checkpoint goes (``run_dir/checkpoint``); None writes nothing.
        should_stop: polled before every optimizer step; True stops the run there (status
            "interrupted", checkpoint written). In the main thread the first Ctrl-C / kernel
            interrupt does the same (a second Ctrl-C raises KeyboardInterrupt at once, which
            also ends the run as "interrupted", as does one raised by a callback).
        run_id: passed to ``callback.on_begin`` and stored in the checkpoint's trainer state.
        resume_from: the ``checkpoint`` directory of an interrupted run (``run_dir/checkpoint``,
            status "interrupted"): load its weights, optimizer, scheduler and RNG states and
            continue at its step with the same batch order (each epoch's seeded batches are
            regenerated and the consumed ones skipped), so the run ends with the weights and
            metrics of a run never interrupted (same device and versions). ``config`` must
            equal the run's; the model architecture and tokenised training data must match.
            A stop is resumable when it came at a step boundary (``should_stop``, the first
            Ctrl-C, a KeyboardInterrupt from a callback) or before the optimizer update began.
        dist: this process's :class:`~.distributed.RankGroup` when it is one rank of a
            distributed run (``training/rank_main.py``); None (default): one process. Each rank
            trains on its slice of every global batch of ``config.batch_size`` rows, so N ranks
            see the rows one process sees, in the same order, and the loss is the global mean
            (see :mod:`.distributed`). ``should_stop`` must then be agreed by all ranks; rank 0
            alone calls ``callback`` and writes the checkpoint; evaluation is split between the
            ranks and every rank gets the same result. When a collective fails (a rank died)
            before the optimizer update began, rank 0 still writes a resumable checkpoint of
            the last finished step, then the error propagates.

    Best model / early stopping: with ``config.early_stopping_patience`` or
    ``config.metric_for_best`` (both need ``eval_every`` and ``eval``), every evaluation is
    compared on ``metric_for_best``; the best trainable weights are kept (on the CPU, and in an
    interrupted run's checkpoint) and loaded back into the model at the end, the checkpoint
    then holds them, and ``metrics`` are the best evaluation's plus ``best_step``,
    ``best_epoch``, ``metric_for_best`` and ``stopped_early``. The run stops (status
    "completed") after ``early_stopping_patience`` evaluations in a row without improvement.

    Divergence: after every step's backward pass the loss and the global gradient norm must be
    finite and the loss not exploded (above 100 nats and 10x the first step's); after the last
    step one forward pass checks the final weights the same way. Otherwise the run ends as
    "diverged" (``diverged_step``), no checkpoint is written and the weights are put back as they
    were before the call (a CPU copy of the weights the run changes is kept while it trains; a
    LoRA run that added its adapters removes them again).

    Algorithm: AdamW (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101; betas 0.9,
    0.999, eps 1e-8) on the mean cross-entropy of each optimizer step's rows, global-norm
    gradient clipping, and a linear warmup/decay schedule (``lr_factor``, as
    ``transformers.get_linear_schedule_with_warmup``). Batches: ``batching.length_grouped_batches``
    (seeded by ``(seed, epoch)``), padded per batch.

    Returns:
        :class:`FinetuneResult`.

    Raises:
        UsageError: bad config, labels outside 0..C-1, a model with fewer than 2 labels, a task
            other than "seq-cls", float16 weights for a full fine-tune, LoRA targets that match
            nothing; with ``resume_from``: a run that completed (nothing to resume), a different
            config, model architecture or training data, best-model tracking without an eval
            set. NotFoundError: unknown column; no checkpoint at ``resume_from``.
    """
    cb = _Callback(callback)
    try:
        t_call = time.perf_counter()
        cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config or {})
        task = task_for(
            cfg.task,
            text_column=text_column,
            label_column=label_column,
            prompt_column=prompt_column,
            response_column=response_column,
        )
        plan = _plan(model, tokenizer, train, eval, cfg, task, resume_from)
        run = _Run(
            model,
            tokenizer,
            eval,
            plan,
            cb,
            run_dir=run_dir,
            should_stop=should_stop,
            run_id=run_id,
            resume_from=resume_from,
            dist=dist,
        )
        result = run.run(t_call)
        cb("on_end", result.status, result)
        return result
    except BaseException:
        cb("on_end", "failed", None)  # the progress display must not stay "running"
        raise


class _Run:
    """One planned fine-tune: set-up (seeds, head, LoRA, optimizer, resume), the loop of
    :func:`_train_step` calls with evaluation and best-model tracking, the end of the run
    (divergence, final evaluation, best weights back), the checkpoint and the result."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eval: Any,
        plan: _Plan,
        cb: _Callback,
        *,  # noqa: A002
        run_dir: Any,
        should_stop: Optional[Callable[[], bool]],
        run_id: Optional[str],
        resume_from: Optional[os.PathLike | str],
        dist: Any,
    ):
        import psutil
        import torch

        self.model, self.tokenizer, self.eval, self.plan, self.cfg, self.cb = model, tokenizer, eval, plan, plan.cfg, cb
        self.run_dir, self.should_stop, self.run_id, self.resume_from, self.dist = (
            run_dir,
            should_stop,
            run_id,
            resume_from,
            dist,
        )
        self.proc = psutil.Process()
        self.metric_name, self.greater = self.cfg.best_metric()
        best = {"metric": self.metric_name, "value": None, "step": None, "epoch": None, "bad_evals": 0, "metrics": None}
        self.state = _State(best=best, peak_rss=self.proc.memory_info().rss)
        if plan.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(plan.device)
        self.stop_flag = threading.Event()
        self.head_names: list[str] = []
        self.trainable: list[Any] = []
        self.final_metrics: dict[str, Any] = {}
        self.won = False  # best-model tracking ended with the best weights loaded back
        self.peak_dev: Optional[int] = None
        self.ck: Optional[Path] = None
        self.sha: Optional[str] = None

    def run(self, t_call: float) -> FinetuneResult:
        cfg, s = self.cfg, self.state
        try:
            with deterministic_mode(cfg.deterministic):
                seed_everything(cfg.seed, deterministic=cfg.deterministic)
                self._setup()
                p = self.plan
                self.cb(
                    "on_begin",
                    p.total_steps,
                    min(len(p.tok) * cfg.epochs, p.total_steps * cfg.batch_size * cfg.grad_accum),
                    self.run_id,
                )
                self.model.train()
                ctrl_c = _sigint_stops(self.stop_flag) if self.dist is None else contextlib.nullcontext()
                with ctrl_c:  # ranks: should_stop
                    self._train()
                self._finish()
                if self.run_dir is not None and s.status != "diverged":
                    self._save()
                if s.failure is not None:
                    raise s.failure
        finally:
            with contextlib.suppress(Exception):
                self.model.eval()
        return self._result(t_call)

    # -- set-up ------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Head, LoRA, the loss module (DDP/FSDP-wrapped in a rank), AdamW and the schedule; the
        resumed state; the dropout stream of a rank."""
        import torch

        cfg, p, dist = self.cfg, self.plan, self.dist
        # what a diverged run puts back (a rank trains a copy: the kernel's alias is never changed)
        self.before = _weights_before(self.model, cfg.method) if dist is None else {}
        self.wrapped_here = cfg.method == "lora" and not _is_peft(self.model)
        if not _is_peft(self.model) and p.task.has_head:
            self.head_names = reinit_untrained_head(self.model, cfg.seed)
        if cfg.method == "lora":
            self.model = _wrap_lora(self.model, cfg)
        self.fwd = _loss_module(self.model, p.task)
        if dist is not None:  # DDP replicas (rank 0's weights broadcast) or FSDP2 shards
            self.fwd = dist.wrap(self.fwd, self.model)
        self.trainable = [q for q in self.model.parameters() if q.requires_grad]
        if not self.trainable:
            raise UsageError(
                "the model has no trainable parameters (all requires_grad=False); unfreeze it or use method='lora'"
            )
        fused = all(q.device.type in ("cpu", "cuda") and q.dtype.is_floating_point for q in self.trainable)
        self.opt = torch.optim.AdamW(
            _param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda st: lr_factor(st, p.total_steps, p.warmup, cfg.lr_scheduler)
        )
        ts = self._resume() if p.rstate is not None else None
        if dist is not None:  # dropout: rank 0 draws what one process draws, other ranks their own stream
            saved = ts.get("rng_ranks") if ts is not None else None
            if saved and len(saved) == dist.world_size:
                restore_rng(saved[dist.rank])
            elif dist.rank > 0:
                torch.manual_seed(rank_seed(cfg.seed, dist.rank) + self.state.start_step)

    def _resume(self) -> dict[str, Any]:
        """Load the checkpoint's weights, optimizer, scheduler, history and RNG states; returns
        its training state (``training_state.pt``)."""
        s, p, rstate = self.state, self.plan, self.plan.rstate
        load_weights(self.model, self.resume_from)
        ts = load_training_state(self.resume_from)
        self.opt.load_state_dict(ts["optimizer"])
        self.sched.load_state_dict(ts["scheduler"])
        s.step = s.start_step = int(rstate["steps"])
        s.losses = [float(x) for x in rstate.get("train_loss") or []]
        s.eval_history.extend(rstate.get("eval_history") or [])
        s.best.update(rstate.get("best") or {})
        if ts.get("best_params"):
            s.best_w.update(ts["best_params"])
        if (
            self.eval is not None
            and p.eval_every
            and s.step % p.eval_every == 0
            and 0 < s.step < p.total_steps
            and not any(h.get("step") == s.step for h in s.eval_history)
        ):
            self._run_eval()  # the stop came before this step's evaluation
        s.stopped_early = self._patience_spent()  # also when a callback's Ctrl-C cut off the check
        restore_rng(ts["rng"])  # last: nothing above may draw from the RNGs
        return ts

    # -- evaluation and best-model tracking --------------------------------------------------

    def _eval_only(self) -> Any:
        return self.plan.task.evaluate(self.model, self.tokenizer, self.eval, self.cfg, self.dist)

    def _run_eval(self) -> None:
        """Evaluate at the current step, track the best, record the history, tell the callback."""
        s = self.state
        epoch_f = self.plan.epoch_of(s.step)
        ev = self._eval_only()
        if self.cfg.track_best:  # before the callback: a KeyboardInterrupt there must find the best up to date
            v = float(ev.to_metrics()[self.metric_name])
            if s.best["value"] is None or (v > s.best["value"] if self.greater else v < s.best["value"]):
                s.best.update(value=v, step=s.step, epoch=epoch_f, bad_evals=0, metrics=ev.to_metrics())
                s.best_w.clear()
                s.best_w.update(
                    {n: q.detach().to("cpu", copy=True) for n, q in self.model.named_parameters() if q.requires_grad}
                )
            else:
                s.best["bad_evals"] += 1
        s.eval_history.append({"step": s.step, "epoch": epoch_f, **ev.to_metrics()})
        s.last_eval = ev
        self.cb("on_eval", s.step, epoch_f, ev.to_metrics())

    def _patience_spent(self) -> bool:
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.state.best["bad_evals"] >= patience

    # -- the loop ----------------------------------------------------------------------------

    def _train(self) -> None:
        """Epochs of steps until the plan's total, a stop, divergence or early stopping; then the
        check of the final weights. A Ctrl-C, or a failed collective at a step boundary in a rank,
        ends the run "interrupted"."""
        s, cfg, spe = self.state, self.cfg, self.plan.steps_per_epoch
        try:
            for epoch in range(s.start_step // spe, cfg.epochs):
                if s.step >= self.plan.total_steps or s.stopped_early:
                    break
                self._epoch(epoch)
                if s.status in ("interrupted", "diverged") or s.stopped_early:
                    break
            if s.status == "completed" and s.step > s.start_step:  # the last update: is the loss still finite?
                self._check_last()
        except KeyboardInterrupt:
            s.status = "interrupted"
            self.opt.zero_grad(set_to_none=True)
        except Exception as e:  # a rank died: the weights are still the last finished step's
            if self.dist is None or not s.resumable or self.dist.sharded:
                raise
            s.status, s.failure = "interrupted", e
            self.opt.zero_grad(set_to_none=True)

    def _epoch(self, epoch: int) -> None:
        """The optimizer steps of one epoch (a resumed run skips the groups already consumed)."""
        s, cfg, p = self.state, self.cfg, self.plan
        batches = length_grouped_batches(
            p.tok.lengths, cfg.batch_size, seed=(cfg.seed, epoch), group=cfg.group_by_length
        )
        first_g = (s.step % p.steps_per_epoch) * cfg.grad_accum if epoch == s.start_step // p.steps_per_epoch else 0
        for g in range(first_g, len(batches), cfg.grad_accum):
            if s.step >= p.total_steps:
                break
            if self.stop_flag.is_set() or (self.should_stop is not None and self.should_stop()):
                s.status = "interrupted"
                break
            if not self._step(batches[g : g + cfg.grad_accum]):
                break
            if self.eval is not None and p.eval_every and s.step % p.eval_every == 0 and s.step < p.total_steps:
                self._run_eval()
                self.model.train()
                if self._patience_spent():
                    s.stopped_early = True
                    break

    def _step(self, group: list[Any]) -> bool:
        """One optimizer step over ``group``; False when it diverged (no update made)."""
        import torch

        s, p = self.state, self.plan
        if self.run_dir is not None:
            s.rng_at_step = capture_rng()
        t0 = time.perf_counter()
        lr_now = self.opt.param_groups[0]["lr"]
        step_loss, n_rows, n_real, n_padded, s.last_batch = _train_step(
            self.fwd, self.model, group, p.tok, p.tok.lengths, p.labels, p.pad_id, p.device, p.task, self.dist
        )
        s.real_tokens += n_real
        s.padded_tokens += n_padded
        s.resumable = False  # an update cut short cannot be resumed exactly
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm or math.inf)
        if not _finite(step_loss, grad_norm, s.losses[0] if s.losses else None):
            s.status, s.diverged_step = "diverged", s.step + 1
            return False
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        s.step += 1
        s.resumable, s.rng_at_step = True, None
        s.samples += n_rows
        s.train_s += time.perf_counter() - t0
        s.losses.append(step_loss)
        s.peak_rss = max(s.peak_rss, self.proc.memory_info().rss)
        sps = s.samples / s.train_s if s.train_s > 0 else 0.0
        self.cb("on_step", s.step, step_loss, lr_now, sps, (p.total_steps - s.step) * s.train_s / s.step)
        return True

    def _check_last(self) -> None:
        """One forward pass on this rank's part of the last micro-batch with the final weights:
        a non-finite or exploded loss ends the run "diverged"."""
        import torch

        s = self.state
        ids, mask, y = s.last_batch
        with torch.no_grad():
            last = self.plan.task.mean_loss(self.model, ids, mask, y)  # per row, or per response token
        if self.dist is not None:  # every rank decides alike (NaN/inf survive the sum)
            last = self.dist.sum(last) / self.dist.world_size
        if not _finite(last, 0.0, s.losses[0] if s.losses else None):
            s.status, s.diverged_step = "diverged", s.step

    # -- the end of the run ------------------------------------------------------------------

    def _finish(self) -> None:
        """Undo a diverged run; total the token counts over ranks; the final evaluation, with the
        best weights loaded back under best-model tracking; the final metrics."""
        import torch

        s, dist = self.state, self.dist
        if s.status == "diverged":
            self.opt.zero_grad(set_to_none=True)
            if dist is None:  # a rank's copy is thrown away: the kernel's alias was never changed
                self.model = _put_back(self.model, self.before, self.wrapped_here)
        if dist is not None and s.failure is None:  # this rank's token counts -> the run's
            s.real_tokens, s.padded_tokens = int(dist.sum(s.real_tokens)), int(dist.sum(s.padded_tokens))
        self.model.eval()
        for q in self.trainable if s.step > 0 and s.status != "diverged" else ():
            q._llmos_trained = True  # the head is no longer "never trained" (see untrained_head_params)
        if s.status == "completed" and self.eval is not None and not s.stopped_early:
            self._run_eval()
        self.won = s.status == "completed" and self.cfg.track_best and s.best["step"] is not None
        if self.won and (s.best["step"] != s.step or s.last_eval is None):  # load the best weights back, score them
            with torch.no_grad():
                for n, q in self.model.named_parameters():
                    if n in s.best_w:
                        q.copy_(s.best_w[n].to(q.device))
            s.last_eval = self._eval_only()
        if s.last_eval is not None and s.status == "completed":
            self.final_metrics = s.last_eval.to_metrics()
        if self.won:
            self.final_metrics.update(
                best_step=s.best["step"],
                best_epoch=s.best["epoch"],
                metric_for_best=self.metric_name,
                stopped_early=s.stopped_early,
            )
        if self.plan.device.type == "cuda":
            self.peak_dev = int(torch.cuda.max_memory_allocated(self.plan.device))

    def _trainer_state(self) -> dict[str, Any]:
        """``trainer_state.json`` of the checkpoint (JSON-safe)."""
        s, p, mconf, dist = self.state, self.plan, self.model.config, self.dist
        id2label = p.task.id2label(mconf)
        return {
            "run_id": self.run_id,
            "status": s.status,
            "task": self.cfg.task,
            "method": self.cfg.method,
            "base_model": str(getattr(mconf, "name_or_path", "") or getattr(mconf, "_name_or_path", "")),
            "config": self.cfg.to_dict(),
            "steps": s.step,
            "total_steps": p.total_steps,
            "epochs": p.epoch_of(s.step),
            "id2label": id2label,
            "label2id": {v: k for k, v in id2label.items()},
            "data_fingerprint": p.fingerprint,
            "train_loss": s.losses,
            "metrics": self.final_metrics,
            "eval_history": s.eval_history,
            "best": s.best,
            "model_fingerprint": p.model_fp,
            "train_digest": p.digest,
            "resumed_from": str(self.resume_from) if self.resume_from is not None else None,
            # FSDP: each rank holds a shard of the optimizer state, which is not saved (yet)
            "resumable": s.status == "interrupted" and s.resumable and not (dist is not None and dist.sharded),
        }

    def _save(self) -> None:
        """Write the checkpoint (rank 0 of a distributed run; every rank joins its collectives),
        with the resume state when the run stopped resumably."""
        s, dist = self.state, self.dist
        state = self._trainer_state()
        collective = dist is not None and s.failure is None  # every rank takes part, rank 0 writes
        extra = None
        if state["resumable"]:
            rng = s.rng_at_step if s.rng_at_step is not None else capture_rng()
            rng_ranks = dist.gather(rng) if collective else None
            best_w = dict(s.best_w) or None

            def extra(d: Path) -> None:
                save_training_state(d, self.opt, self.sched, rng, best_w, rng_ranks)

        full_sd = dist.full_state_dict(self.model) if collective else None
        if dist is None or dist.main:
            self.ck, self.sha = save_checkpoint(
                self.model, self.tokenizer, self.run_dir, state, extra=extra, state_dict=full_sd
            )

    def _result(self, t_call: float) -> FinetuneResult:
        s, p, won = self.state, self.plan, self.won
        return FinetuneResult(
            status=s.status,
            steps=s.step,
            total_steps=p.total_steps,
            epochs=p.epoch_of(s.step),
            train_loss=s.losses,
            samples_per_s=s.samples / s.train_s if s.train_s > 0 else 0.0,
            tokens_per_s=s.real_tokens / s.train_s if s.train_s > 0 else 0.0,
            padded_fraction=1.0 - s.real_tokens / s.padded_tokens if s.padded_tokens else 0.0,
            wall_s=time.perf_counter() - t_call,
            peak_rss_bytes=int(s.peak_rss),
            peak_device_bytes=self.peak_dev,
            metrics=self.final_metrics,
            eval=s.last_eval if s.status == "completed" else None,
            eval_history=s.eval_history,
            checkpoint=self.ck,
            checkpoint_sha256=self.sha,
            config=self.cfg,
            data_fingerprint=p.fingerprint,
            run_id=self.run_id,
            head_reinitialized=self.head_names,
            trainable_params=sum(q.numel() for q in self.trainable),
            total_params=sum(q.numel() for q in self.model.parameters()),
            model=self.model,
            best_step=s.best["step"] if won else None,
            best_epoch=s.best["epoch"] if won else None,
            best_value=s.best["value"] if won else None,
            stopped_early=s.stopped_early,
            resumed_from=str(self.resume_from) if self.resume_from is not None else None,
            diverged_step=s.diverged_step,
        )
