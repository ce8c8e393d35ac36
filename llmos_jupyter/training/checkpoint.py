"""Checkpoints of a fine-tune: writing them atomically, reading them back, and the resume state.

A checkpoint is the folder ``run_dir/checkpoint``: the weights (``model.safetensors``, or
``adapter_model.safetensors`` for LoRA), the config and tokenizer files of ``save_pretrained``,
``trainer_state.json`` (:data:`TRAINER_STATE`: status, steps, config, metrics, fingerprints) and,
for an interrupted run that can be resumed, ``training_state.pt`` (:data:`TRAINING_STATE`: the
AdamW and scheduler ``state_dict``s, the RNG states at the step boundary, the best weights so far).
:func:`save_checkpoint` builds it in a temporary sibling folder and renames it into place.

Only torch tensors and plain Python values are stored in ``training_state.pt``, and
``torch.load(weights_only=True)`` reads them back (no pickle code runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import NotFoundError, UsageError
from ..pull import sha256_file

TRAINER_STATE = "trainer_state.json"  # the run state every checkpoint carries (save_checkpoint writes it)
TRAINING_STATE = "training_state.pt"
RESUME_FORMAT = 1


def is_peft(model: Any) -> bool:
    """True when ``model`` is a ``peft.PeftModel`` (LoRA adapters around a base model)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    run_dir: os.PathLike,
    state: dict[str, Any],
    extra: Optional[Callable[[Path], None]] = None,
    state_dict: Optional[dict[str, Any]] = None,
) -> tuple[Path, str]:
    """Write ``run_dir/checkpoint`` atomically: weights (safetensors), config, tokenizer,
    ``trainer_state.json`` and whatever ``extra(directory)`` writes (the resume state). Built in a
    temporary sibling directory and renamed into place, so a failure leaves no half-written
    checkpoint and an older one stays intact until replaced.
    ``state_dict``: the weights to write instead of the model's own (an FSDP model's gathered
    full state dict).

    Returns:
        (checkpoint directory, sha256 of the weights file). For a sharded save the sha256 is that
        of the lines "<file> <sha256>" of every shard, sorted by name.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / "checkpoint"
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-tmp-", dir=run_dir))
    try:
        from .export import quiet_saving

        with quiet_saving():
            model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        name = "adapter_model.safetensors" if is_peft(model) else "model.safetensors"
        if (tmp / name).exists():
            sha = sha256_file(tmp / name)
        else:
            shards = sorted(p.name for p in tmp.glob("*.safetensors"))
            if not shards:
                raise RuntimeError(f"save_pretrained wrote no safetensors file in {tmp}")
            sha = hashlib.sha256("".join(f"{s} {sha256_file(tmp / s)}\n" for s in shards).encode()).hexdigest()
        if extra is not None:
            extra(tmp)
        state = dict(state, checkpoint_sha256=sha, weights_file=name)
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2, default=str))
        old = None
        if final.exists():
            old = run_dir / f".checkpoint-old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, sha


def load_checkpoint(checkpoint: os.PathLike, *, base_model: Any = None) -> tuple[Any, Any]:
    """Load a checkpoint written by :func:`finetune` with plain transformers / peft.

    Args:
        checkpoint: the ``run_dir/checkpoint`` directory.
        base_model: for LoRA checkpoints, the base model object or path (default: the path
            recorded in ``adapter_config.json``).

    Returns:
        (model in eval mode, tokenizer).

    Raises:
        NotFoundError: when the directory holds no checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    ck = Path(checkpoint)
    if not (ck / TRAINER_STATE).exists():
        raise NotFoundError(
            f"no fine-tuning checkpoint in {ck} (missing {TRAINER_STATE}); pass the run's checkpoint directory (see "
            "%llm runs)"
        )
    state = json.loads((ck / TRAINER_STATE).read_text())
    tok = AutoTokenizer.from_pretrained(ck)
    lm = state.get("task") == "causal-lm"
    if state.get("method") == "lora":
        from peft import PeftModel

        if base_model is None or isinstance(base_model, (str, os.PathLike)):
            src = base_model or json.loads((ck / "adapter_config.json").read_text())["base_model_name_or_path"]
            if lm:
                base_model = AutoModelForCausalLM.from_pretrained(src)
            else:
                base_model = AutoModelForSequenceClassification.from_pretrained(
                    src,
                    num_labels=len(state["id2label"]),
                    id2label={int(k): v for k, v in state["id2label"].items()},
                    label2id=state["label2id"],
                )
        model = PeftModel.from_pretrained(base_model, ck)
    else:
        model = (AutoModelForCausalLM if lm else AutoModelForSequenceClassification).from_pretrained(ck)
    model.eval()
    return model, tok


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
        raise NotFoundError(
            f"{what} has no checkpoint at {ck} (missing {TRAINER_STATE}); nothing to resume — start a new run with "
            "%llm finetune"
        )
    state = json.loads(f.read_text())
    if state.get("status") != "interrupted":
        raise UsageError(
            f"{what} {state.get('status', 'finished')} ({state.get('steps')}/{state.get('total_steps')} steps); "
            "nothing to resume — start a new run with %llm finetune"
        )
    if not state.get("resumable") or not (ck / TRAINING_STATE).is_file():
        raise UsageError(
            f"{what} was stopped without resumable optimizer state (older version, or stopped inside an optimizer "
            "update); start a new run with %llm finetune"
        )
    return state


def load_training_state(checkpoint: os.PathLike) -> dict[str, Any]:
    """``training_state.pt`` (optimizer, scheduler, rng, best weights), read with
    ``torch.load(weights_only=True)`` onto the CPU."""
    import torch

    return torch.load(Path(checkpoint) / TRAINING_STATE, map_location="cpu", weights_only=True)


def save_training_state(
    path: Path,
    opt: Any,
    sched: Any,
    rng: dict[str, Any],
    best_params: Optional[dict[str, Any]],
    rng_ranks: Optional[list[dict[str, Any]]] = None,
) -> None:
    """Write ``training_state.pt`` into ``path`` (inside the checkpoint being built).
    ``rng_ranks``: in a distributed run, every rank's RNG states in rank order (a resume with
    the same number of ranks gives each rank its own dropout stream back)."""
    import torch

    torch.save(
        {
            "format": RESUME_FORMAT,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": rng,
            "best_params": best_params,
            "rng_ranks": rng_ranks,
        },
        path / TRAINING_STATE,
    )


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
            raise UsageError(
                f"the checkpoint's adapters do not fit this model (e.g. {bad[0]}); load the same base model, or "
                "start a new run"
            )
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
        raise UsageError(
            f"the checkpoint's weights do not fit this model ({k}); load the same base model, or start a new run"
        )
