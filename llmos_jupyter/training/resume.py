"""Resuming an interrupted fine-tune exactly, and the state it needs.

An interrupted run's checkpoint (``run_dir/checkpoint``) holds, next to the weights and
``trainer_state.json``, the file ``training_state.pt`` (:data:`TRAINING_STATE`): the AdamW and
scheduler ``state_dict``s, the RNG states of Python, NumPy and torch (CPU and CUDA) at the step
boundary where the run stopped, and, with best-model tracking, the best trainable weights so far.
The data order needs no storing: batches are ``length_grouped_batches(seed=(seed, epoch))``, so a
resumed run regenerates each epoch's batches and skips the ones already consumed.

Same config, data and starting checkpoint on the same device and package versions → the
resumed run ends with the same weights (``torch.equal``) and metrics as a run never stopped.

Only torch tensors and plain Python values are stored, and ``torch.load(weights_only=True)``
reads them back (no pickle code runs).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import NotFoundError, UsageError

TRAINER_STATE = "trainer_state.json"  # the run state every checkpoint carries (finetune.py writes it)
TRAINING_STATE = "training_state.pt"
RESUME_FORMAT = 1
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
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()), int(pos), int(has_gauss), float(gauss)),
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
            name = name[len(pre):]
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


# --------------------------------------------------------------------------- reading a checkpoint
def read_resume_state(checkpoint: os.PathLike, *, what: str = "the checkpoint") -> dict[str, Any]:
    """``trainer_state.json`` of an interrupted run's checkpoint, checked to be resumable.

    Raises:
        NotFoundError: no checkpoint there. UsageError: the run completed (nothing to resume),
            the checkpoint carries no optimizer/RNG state (written by an older version, or
            stopped in the middle of an optimizer update).
    """
    ck = Path(checkpoint)
    f = ck / TRAINER_STATE
    if not f.is_file():
        raise NotFoundError(f"{what} has no checkpoint at {ck} (missing {TRAINER_STATE}); nothing to resume — start a new run with %llm finetune")
    state = json.loads(f.read_text())
    if state.get("status") != "interrupted":
        raise UsageError(f"{what} {state.get('status', 'finished')} ({state.get('steps')}/{state.get('total_steps')} steps); nothing to resume — start a new run with %llm finetune")
    if not state.get("resumable") or not (ck / TRAINING_STATE).is_file():
        raise UsageError(f"{what} was stopped without resumable optimizer state (older version, or stopped inside an optimizer update); start a new run with %llm finetune")
    return state


def check_resume(state: dict[str, Any], *, config: dict[str, Any], model_fp: str, data_digest: str, what: str = "the checkpoint") -> None:
    """Check that a resume continues the same run: same config, model architecture and data.

    Raises:
        UsageError: one line naming what differs and the fix.
    """
    saved = {k: v for k, v in (state.get("config") or {}).items() if k not in PROVENANCE_KEYS}
    diff = [k for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(f"{what} was trained with {k}={saved.get(k)!r}, this call has {k}={config.get(k)!r}; a resume keeps the run's config: drop the option")
    if state.get("model_fingerprint") != model_fp:
        raise UsageError(f"{what} was trained on a different model (fingerprint {state.get('model_fingerprint')} ≠ {model_fp}); load the same base model under the alias, or start a new run")
    if state.get("train_digest") != data_digest:
        raise UsageError(f"{what} was trained on different data (digest {state.get('train_digest')} ≠ {data_digest}); pass the same dataset version, or start a new run")


def load_training_state(checkpoint: os.PathLike) -> dict[str, Any]:
    """``training_state.pt`` (optimizer, scheduler, rng, best weights), read with
    ``torch.load(weights_only=True)`` onto the CPU."""
    import torch

    return torch.load(Path(checkpoint) / TRAINING_STATE, map_location="cpu", weights_only=True)


def save_training_state(path: Path, opt: Any, sched: Any, rng: dict[str, Any], best_params: Optional[dict[str, Any]],
                        rng_ranks: Optional[list[dict[str, Any]]] = None) -> None:
    """Write ``training_state.pt`` into ``path`` (inside the checkpoint being built).
    ``rng_ranks``: in a distributed run, every rank's RNG states in rank order (a resume with
    the same number of ranks gives each rank its own dropout stream back)."""
    import torch

    torch.save({"format": RESUME_FORMAT, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": rng, "best_params": best_params, "rng_ranks": rng_ranks}, path / TRAINING_STATE)


def load_weights(model: Any, checkpoint: os.PathLike) -> None:
    """Load the trained weights of a checkpoint into ``model`` in place: the adapters (and head)
    of a LoRA ``PeftModel`` from ``adapter_model.safetensors``, else every weight from
    ``*.safetensors`` (tied weights that the file leaves out stay tied).

    Raises:
        UsageError: the files do not match the model's parameters.
    """
    import torch
    from safetensors.torch import load_file

    ck = Path(checkpoint)
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(model, load_file(ck / "adapter_model.safetensors"))
        bad = list(getattr(res, "unexpected_keys", []) or [])
        if bad:
            raise UsageError(f"the checkpoint's adapters do not fit this model (e.g. {bad[0]}); load the same base model, or start a new run")
        return
    sd: dict[str, Any] = {}
    for f in sorted(ck.glob("*.safetensors")):
        sd.update(load_file(f))
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(sd, strict=False)
    loaded = {model.state_dict()[k].data_ptr() for k in sd if k in model.state_dict()}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if unexpected or untied:
        k = (list(unexpected) + untied)[0]
        raise UsageError(f"the checkpoint's weights do not fit this model ({k}); load the same base model, or start a new run")


def resume_config(prev_config: dict[str, Any], given: dict[str, Any], defaults: dict[str, Any], run_id: str) -> dict[str, Any]:
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
                raise UsageError(f"run {run_id} fine-tuned a {cfg.get(k)} model, this alias holds a {v} model; "
                                 f"resume it on an alias loaded as {cfg.get(k)} from the same base model")
            from .config import flag_of

            raise UsageError(f"run {run_id} was trained with {k}={cfg.get(k)!r}; --resume continues with the run's own config: "
                             f"drop {flag_of(k)} {v} ({k}= in Python)")
    return cfg


def plan_resume(run: Any, given: dict[str, Any], defaults: dict[str, Any]) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """Check that registry run ``run`` (a :class:`~.runs.Run`) can be resumed and return
    (the config to continue with, its checkpoint directory, its trainer state).

    Raises:
        UsageError: not a fine-tune, still running, completed (nothing to resume), already
            resumed by another run (a run is resumed once; resume that run instead), no
            checkpoint, not resumable, or an option that differs from the run's config.
    """
    if run.kind != "finetune":
        raise UsageError(f"run {run.id} is a {run.kind} run; --resume takes the id of an interrupted fine-tune (see %llm runs)")
    if run.status == "running":
        raise UsageError(f"run {run.id} is still running; cancel it (%llm job cancel) or wait, then resume it")
    if run.status == "completed":
        raise UsageError(f"run {run.id} completed; nothing to resume — start a new run with %llm finetune")
    if getattr(run, "resumed_by", None):  # one rule: a run is resumed once (the link is kept both ways)
        from .runs import already_resumed

        raise UsageError(already_resumed(run.id, run.resumed_by))
    if not run.checkpoint:
        raise UsageError(f"run {run.id} {run.status} without a checkpoint; nothing to resume — start a new run with %llm finetune")
    cfg = resume_config(run.config, given, defaults, run.id)
    state = read_resume_state(run.checkpoint, what=f"run {run.id}")
    return cfg, Path(run.checkpoint), state
