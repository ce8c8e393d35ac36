"""Resuming an interrupted fine-tune exactly: RNG states, fingerprints and the resume checks.

An interrupted run's checkpoint (``run_dir/checkpoint``, written and read by :mod:`.checkpoint`)
holds, next to the weights and ``trainer_state.json``, the file ``training_state.pt``: the AdamW
and scheduler ``state_dict``s, the RNG states of Python, NumPy and torch (CPU and CUDA) at the step
boundary where the run stopped (:func:`capture_rng`), and, with best-model tracking, the best
trainable weights so far. The data order needs no storing: batches are
``length_grouped_batches(seed=(seed, epoch))``, so a resumed run regenerates each epoch's batches
and skips the ones already consumed.

Same config, data and starting checkpoint on the same device and package versions → the
resumed run ends with the same weights (``torch.equal``) and metrics as a run never stopped.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import UsageError
from .checkpoint import read_resume_state

# Keys of the run registry's config that are provenance, not FinetuneConfig fields.
PROVENANCE_KEYS = ("resumed_from",)


# --------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """RNG states of Python ``random``, NumPy's global RNG and torch (CPU, and every CUDA device
    when CUDA is initialised), as tensors and plain values."""
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            int(pos),
            int(has_gauss),
            float(gauss),
        ),
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` returned."""
    import torch

    v = state["python"]
    random.setstate((v[0], tuple(v[1]), v[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- fingerprints
def _base_param_name(name: str) -> Optional[str]:
    """A parameter name as in the bare base model (peft wrapping undone); None for adapters."""
    if "lora_" in name or ".modules_to_save." in name:
        return None
    for pre in ("base_model.model.",):
        if name.startswith(pre):
            name = name[len(pre) :]
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def model_fingerprint(model: Any) -> str:
    """sha256 (16 hex) of a model's architecture: base class name and the names, shapes and dtypes
    of its base parameters (LoRA adapters and peft wrapping ignored, values ignored, since
    training changes them). Two loads of the same model give the same fingerprint."""
    base = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    h = hashlib.sha256(type(base).__name__.encode())
    for name, p in model.named_parameters():
        n = _base_param_name(name)
        if n is not None:
            h.update(f"|{n}:{tuple(p.shape)}:{p.dtype}".encode())
    return h.hexdigest()[:16]


def train_digest(tok: Any, labels: Optional[np.ndarray]) -> str:
    """sha256 (16 hex) of the tokenised training data (token ids, row offsets, labels): what the
    batches and losses depend on, whatever the dataset object's own fingerprint says."""
    h = hashlib.sha256(np.ascontiguousarray(tok.ids).tobytes())
    h.update(np.ascontiguousarray(tok.offsets).tobytes())
    for extra in ("labels", "targets"):  # SFT: the masked labels and response-token counts
        if getattr(tok, extra, None) is not None:
            h.update(np.ascontiguousarray(getattr(tok, extra)).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def check_resume(
    state: dict[str, Any], *, config: dict[str, Any], model_fp: str, data_digest: str, what: str = "the checkpoint"
) -> None:
    """Check that a resume continues the same run: same config, model architecture and data.

    Raises:
        UsageError: one line naming what differs and the fix.
    """
    saved = {k: v for k, v in (state.get("config") or {}).items() if k not in PROVENANCE_KEYS}
    diff = [k for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(
            f"{what} was trained with {k}={saved.get(k)!r}, this call has {k}={config.get(k)!r}; a resume keeps the "
            "run's config: drop the option"
        )
    if state.get("model_fingerprint") != model_fp:
        raise UsageError(
            f"{what} was trained on a different model (fingerprint {state.get('model_fingerprint')} ≠ {model_fp}); "
            "load the same base model under the alias, or start a new run"
        )
    if state.get("train_digest") != data_digest:
        raise UsageError(
            f"{what} was trained on different data (digest {state.get('train_digest')} ≠ {data_digest}); pass the "
            "same dataset version, or start a new run"
        )


def resume_config(
    prev_config: dict[str, Any], given: dict[str, Any], defaults: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """The config a resume of run ``run_id`` continues with: the run's own (provenance keys
    dropped). An option in ``given`` that differs both from ``defaults`` (i.e. was set) and from
    the run's value is refused.

    Raises:
        UsageError: one line naming the conflicting option.
    """
    cfg = {k: v for k, v in prev_config.items() if k not in PROVENANCE_KEYS}
    for k, v in given.items():
        if k in defaults and v == defaults[k]:
            continue
        if cfg.get(k) != v:
            if k == "task":  # not an option: it comes from the model the alias holds
                raise UsageError(
                    f"run {run_id} fine-tuned a {cfg.get(k)} model, this alias holds a {v} model; "
                    f"resume it on an alias loaded as {cfg.get(k)} from the same base model"
                )
            from .config import flag_of

            raise UsageError(
                f"run {run_id} was trained with {k}={cfg.get(k)!r}; --resume continues with the run's own config: "
                f"drop {flag_of(k)} {v} ({k}= in Python)"
            )
    return cfg


def plan_resume(
    run: Any, given: dict[str, Any], defaults: dict[str, Any]
) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Check that registry run ``run`` (a :class:`~.runs.Run`) can be resumed and return
    (the config to continue with, its checkpoint directory, its trainer state).

    Raises:
        UsageError: not a fine-tune, still running, completed (nothing to resume), already
            resumed by another run (a run is resumed once; resume that run instead), no
            checkpoint, not resumable, or an option that differs from the run's config.
    """
    if run.kind != "finetune":
        raise UsageError(
            f"run {run.id} is a {run.kind} run; --resume takes the id of an interrupted fine-tune (see %llm runs)"
        )
    if run.status == "running":
        raise UsageError(f"run {run.id} is still running; cancel it (%llm job cancel) or wait, then resume it")
    if run.status == "completed":
        raise UsageError(f"run {run.id} completed; nothing to resume — start a new run with %llm finetune")
    if getattr(run, "resumed_by", None):  # one rule: a run is resumed once (the link is kept both ways)
        from .runs import already_resumed

        raise UsageError(already_resumed(run.id, run.resumed_by))
    if not run.checkpoint:
        raise UsageError(
            f"run {run.id} {run.status} without a checkpoint; nothing to resume — start a new run with %llm finetune"
        )
    cfg = resume_config(run.config, given, defaults, run.id)
    state = read_resume_state(run.checkpoint, what=f"run {run.id}")
    return cfg, Path(run.checkpoint), state
