"""What ``%llm optimize`` does between the API and the driver: check the request, read the
evaluation split, build the speed inputs, run :func:`.driver.run` on the loaded model, register
the optimised copy with the resource manager and record the call as a run of kind ``optimize``.

``llmos_jupyter.api.optimize`` is the public entry (its docstring lists the options and the
errors); it hands this module the manager and the getters of the data store and run registry,
so nothing here imports the API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from ..errors import LLMOSError, UsageError

# structured pruning ranks heads / FFN neurons on this many batches of this many training rows
# (first-order Taylor importance, see prune.taylor_scores): 1,024 rows, ~25 s for MiniLM on 2 cores
CALIBRATION_BATCHES = 32
CALIBRATION_BATCH_SIZE = 32
# causal-lm: 8 rows a batch (256 rows): its logits over the vocabulary, (B, T, vocab) floats, and their
# gradient are the memory peak of a backward pass (SmolLM2 at T=128: 200 MB a batch of 8, 800 MB of 32)
CALIBRATION_LM_BATCH_SIZE = 8

# the dtype column of `%llm ps` for each quantisation level
OPT_DTYPE = {
    "int8": "int8 dynamic",
    "int8-weight": "int8 weight-only",
    "int4": "int4 weight-only",
    "bf16": "bfloat16",
    "fp16": "float16",
}


@dataclass(frozen=True)
class _Options:
    """The options of :func:`optimize_alias` as it received them (see ``llmos_jupyter.api.optimize``)."""

    quantize: str | None
    prune: float | None
    structured: Any
    compile_model: bool
    eval_spec: str | None
    generate: bool
    recover_epochs: int
    as_: str | None
    limit: int | None
    batch_size: int
    speed_batches: int
    repeats: int
    max_new_tokens: int
    max_length: int
    recover_lr: float
    progress: bool


@dataclass(frozen=True)
class _Checked:
    """A request that passed every check, with what the checks read.

    Attributes:
        alias / new_alias: the source alias and the alias of the optimised copy.
        rec: the source's record as it was checked. task / device: its task and device.
        plan: the :class:`.driver.Plan`. opts: the :class:`_Options`.
        dv / ds / train / split: as :func:`_eval_splits` returns them (None without ``--eval``).
    """

    alias: str
    new_alias: str
    rec: Any
    task: str
    device: str
    plan: Any
    opts: _Options
    dv: Any
    ds: Any
    train: Any
    split: str | None


@dataclass(frozen=True)
class _Inputs:
    """What :func:`.driver.run` takes besides the model and the plan (see its Args): the speed
    ``batches`` or decode ``prompt``, ``evaluate``, the ``calibration`` batches, ``recover``."""

    batches: list | None
    prompt: str | None
    evaluate: Callable | None
    calibration: list | None
    recover: Callable | None


def optimize_alias(
    m,
    alias: str,
    *,
    store: Callable,
    registry: Callable,
    prepare: Callable,
    quantize: str | None,
    prune: float | None,
    structured,
    compile_model: bool,
    eval_spec: str | None,
    generate: bool,
    recover_epochs: int,
    as_: str | None,
    limit: int | None,
    batch_size: int,
    speed_batches: int,
    repeats: int,
    max_new_tokens: int,
    max_length: int,
    recover_lr: float,
    progress: bool,
):
    """Run ``llmos_jupyter.api.optimize`` (same options, ``compile`` as ``compile_model`` and
    ``eval`` as ``eval_spec``; same result and errors).

    Args:
        m: the resource manager holding ``alias``.
        store / registry: callables returning the data store and the run registry (called only
            when needed, so a refused request creates neither).
        prepare: ``prepare(dv, split) -> Dataset``: the split as the model's task reads it
            (labels mapped and checked for seq-cls, prompt/response columns for causal-lm).
    """
    given = locals()  # _Options has a field, of the same name, for each option from quantize on
    opts = _Options(**{f.name: given[f.name] for f in fields(_Options)})
    req = _check(m, alias, opts, store=store, prepare=prepare)
    # a llama.cpp alias: optimise the transformers weights of its GGUF, attached for this call only;
    # m.use: refused while a job trains it; cannot be unloaded meanwhile
    with m.borrowed_weights(alias) as attached, m.use(alias) as src:
        m.make_room(req.device, sum(src.bytes.values()), req.new_alias)  # room for the copy, as a load makes it
        inputs = _run_inputs(src, req)
        config = _run_config(req)
        result, run_id = _tracked_run(m, src, req, inputs, config, registry=registry)
    table = result.table(
        alias,
        req.new_alias,
        task=req.task,
        batch_size=batch_size,
        threads=config["threads"],
        rows_evaluated=len(req.ds) if req.ds is not None and inputs.evaluate is not None else None,
        split=f"{req.dv.name}:{req.split}" if req.dv else None,
        run_id=run_id,
    )
    table.note = "; ".join([table.note, *_caveats(req, attached)])
    return table


def _caveats(req: _Checked, attached: bool) -> list[str]:
    """What the table's numbers are not, said in its note: a llama.cpp alias is measured through
    the transformers weights of its GGUF (read for this call when it had none); speed on built-in texts without
    ``--eval``; structured pruning by weight magnitude because the dataset has no train split."""
    out = []
    if req.rec.engine == "llama.cpp":
        out.append(
            f"'{req.alias}' serves on llama.cpp: both columns measure the float32 transformers weights of "
            f"its GGUF, not llama.cpp (see `%llm ps` for its own speed and memory)"
            + ("; they were read from the GGUF for this call and dropped after it" if attached else "")
        )
    if req.dv is None and req.task != "causal-lm":
        out.append("speed measured on built-in texts (give --eval DATA to time your own)")
    if req.plan.structured and req.dv is not None and req.train is None and req.task in ("seq-cls", "causal-lm"):
        out.append(f"'{req.dv.name}' has no train split to rank heads/neurons on, so weight magnitude ranked them")
    return out


def _check(m, alias: str, opts: _Options, *, store: Callable, prepare: Callable) -> _Checked:
    """Check the whole request before anything runs: no job holds the alias, the plan
    (:func:`.driver.check_plan`), the options (:func:`_check_request`), the ``--eval`` splits.

    Returns:
        :class:`_Checked`.

    Raises:
        UsageError: the alias is being fine-tuned, or any refusal of the checks named above.
    """
    from . import driver as _driver

    rec = m.get(alias)
    if rec.exclusive:
        raise UsageError(
            f"'{alias}' is being fine-tuned by {rec.exclusive}; wait with `%llm job wait {rec.exclusive}` "
            f"or stop it with `%llm job cancel {rec.exclusive}`, then optimize it"
        )
    task, device = rec.task, rec.device or "cpu"
    plan = _driver.check_plan(
        quantize=opts.quantize,
        prune=opts.prune,
        structured=opts.structured,
        compile=opts.compile_model,
        recover_epochs=opts.recover_epochs,
        task=task,
        device=device,
        model=rec.model,
        optimized=rec.optimized,
    )
    new_alias = _check_request(m, rec, alias, plan, opts)
    dv, ds, train, split = _eval_splits(
        rec,
        opts.eval_spec,
        store=store,
        prepare=prepare,
        limit=opts.limit,
        recover=bool(plan.recover_epochs),
        calibrate=bool(plan.structured),
    )
    return _Checked(alias, new_alias, rec, task, device, plan, opts, dv, ds, train, split)


def _run_inputs(src, req: _Checked) -> _Inputs:
    """Build, on the source record ``src``, the speed inputs (:func:`_speed_inputs`), the
    evaluator (:func:`_evaluator`), the calibration batches (structured pruning with a train
    split: :func:`calibration_batches`) and the recovery fine-tune (:func:`_recovery`)."""
    batches, prompt = _speed_inputs(src.tokenizer, req)
    evaluate = _evaluator(src, req)
    calibration = (
        calibration_batches(src, req.dv, req.train, max_length=req.opts.max_length, device=req.device)
        if req.plan.structured and req.train is not None
        else None
    )
    recover = _recovery(src, req) if req.plan.recover_epochs else None
    return _Inputs(batches, prompt, evaluate, calibration, recover)


def _run_config(req: _Checked) -> dict:
    """The config the run registry records for the call: the plan, then the options."""
    import torch

    opts, plan = req.opts, req.plan
    config = dict(plan.to_dict(), source=req.alias, new_alias=req.new_alias, eval=opts.eval_spec, split=req.split)
    recorded = ("generate", "limit", "batch_size", "speed_batches", "repeats", "max_new_tokens", "max_length")
    config.update({name: getattr(opts, name) for name in recorded})
    config.update(
        threads=torch.get_num_threads(), device=req.device, recover_lr=opts.recover_lr if plan.recover_epochs else None
    )
    return config


def _tracked_run(m, src, req: _Checked, inputs: _Inputs, config: dict, *, registry: Callable) -> tuple[Any, str]:
    """Run :func:`.driver.run` as a run of kind ``optimize`` (weights written to its checkpoint
    folder), register the copy and close the run.

    Returns:
        ``(result, run id)``: the :class:`.driver.Result` and the id of the recorded run.
    """
    from . import driver as _driver

    plan, dv = req.plan, req.dv
    t0 = time.perf_counter()
    with registry().track(
        "optimize",
        req.alias,
        f"{dv.name}@v{dv.version}:{req.split}" if dv else None,
        config,
        0 if plan.recover_epochs else None,
        dv.fingerprint if dv else None,
    ) as run:
        folder = registry().run_dir(run.id) / "checkpoint"
        result = _driver.run(
            src.model,
            src.tokenizer,
            plan,
            task=req.task,
            batches=inputs.batches,
            prompt=inputs.prompt or "",
            evaluate=inputs.evaluate,
            recover=inputs.recover,
            calibration=inputs.calibration,
            folder=folder,
            auto_class=_task_class(req.task),
            repeats=req.opts.repeats,
            max_new_tokens=req.opts.max_new_tokens,
        )
        _register_copy(m, src, req, result, run_id=run.id)
        _finish_run(run, result, folder, wall_s=time.perf_counter() - t0)
    return result, run.id


def _task_class(task: str) -> str:
    from .quantize import TASK_CLASS

    return TASK_CLASS[task]


def _check_request(m, rec, alias: str, plan, opts: _Options) -> str:
    """Refuse the options that cannot run together (one line each); return the new alias."""
    task = rec.task
    eval_spec, generate, limit = opts.eval_spec, opts.generate, opts.limit
    for name, v, lo in (
        ("batch size", opts.batch_size, 1),
        ("speed batches", opts.speed_batches, 1),
        ("repeats", opts.repeats, 1),
        ("max_new_tokens", opts.max_new_tokens, 2),
    ):
        if int(v) < lo:
            raise UsageError(f"{name} must be at least {lo} (got {v})")
    if limit is not None and int(limit) < 1:
        raise UsageError(f"limit must be at least 1 row (got {limit})")
    if generate and task != "causal-lm":
        raise UsageError(f"'{alias}' is loaded as {task}; --generate scores a causal-lm's answers (drop --generate)")
    if generate and not eval_spec:
        raise UsageError("--generate scores greedy answers on a dataset; add --eval DATASET")
    if plan.recover_epochs and not eval_spec:
        raise UsageError("--recover-epochs fine-tunes on a dataset's train split; add --eval DATASET")
    if plan.recover_epochs and task == "embedding":
        raise UsageError("--recover-epochs fine-tunes seq-cls and causal-lm models; load the model with --task seq-cls")
    new_alias = opts.as_ or f"{alias}-{plan.suffix()}"
    if new_alias in m.aliases():
        raise UsageError(
            f"alias '{new_alias}' is already loaded; name another with --as NAME or `%llm unload {new_alias}`"
        )
    return new_alias


def _eval_splits(
    rec,
    eval_spec: str | None,
    *,
    store: Callable,
    prepare: Callable,
    limit: int | None,
    recover: bool,
    calibrate: bool = False,
) -> tuple[Any, Any, Any, str | None]:
    """``(dataset version, eval split, train split, split name)`` of ``--eval DATASET[:SPLIT]``
    (all None without it); refused before anything runs. The train split is read for a recovery
    fine-tune (required) and for scoring structured pruning (``calibrate``: when it exists)."""
    if not eval_spec:
        return None, None, None, None
    dataset, _, split = str(eval_spec).partition(":")
    split = split or "test"
    dv = store().get(dataset)
    train = None
    if rec.task in ("causal-lm", "seq-cls"):
        ds = prepare(dv, split)
        if recover or (calibrate and "train" in dv.splits):
            train = prepare(dv, "train")
    else:
        if not dv.text_column:
            raise UsageError(
                f"dataset '{dv.name}' has no text column for embeddings; name it with "
                f"`%llm data load ... --text COLUMN`"
            )
        if split not in dv.splits:
            raise UsageError(
                f"dataset '{dv.name}' has no '{split}' split (it has {', '.join(dv.splits)}); "
                f"make one with `%llm data split {dv.name} --test 0.15`"
            )
        ds = dv.splits[split]
    if limit is not None:
        ds = ds.select(range(min(int(limit), len(ds))))
    return dv, ds, train, split


def _speed_inputs(tok, req: _Checked):
    """``(batches, prompt)`` the speed rows time, for the checked request ``req`` and the
    tokenizer ``tok``: a causal-lm decodes from one prompt (the split's first, else a fixed
    one); the others run ``speed_batches`` batches of the split's texts (cycled, else fixed texts)."""
    task, dv, ds, device = req.task, req.dv, req.ds, req.device
    batch_size, speed_batches, max_length = req.opts.batch_size, req.opts.speed_batches, req.opts.max_length
    from ..training.batching import as_text
    from .measure import SPEED_PROMPT, SPEED_TEXTS, encode_batches

    if task == "causal-lm":
        from ..training.sft import render_pair

        first = ds[dv.prompt_column][0] if ds is not None and len(ds) else SPEED_PROMPT
        return None, render_pair(tok, as_text(first), "")[0]
    n = batch_size * speed_batches
    pool = [as_text(t) for t in ds[dv.text_column][:n]] if ds is not None and len(ds) else []
    texts = (pool or SPEED_TEXTS) * (n // max(1, len(pool or SPEED_TEXTS)) + 1)
    texts = texts[:n]
    batches = encode_batches(tok, texts, batch_size=batch_size, max_length=max_length, device=device) if texts else None
    return batches, None


def _register_copy(m, src, req: _Checked, result, *, run_id: str) -> None:
    """Register the optimised copy like a loaded model, with the resident bytes measured."""
    plan, alias = req.plan, req.alias
    real = {req.device: result.after.resident_bytes or 0}
    m.register(
        req.new_alias,
        result.model,
        src.tokenizer,
        source=f"{alias} (optimize: {plan.describe()})",
        task=req.task,
        real_bytes=real,
        labels=src.labels,
        dtype=OPT_DTYPE.get(plan.quantize or "", src.dtype),
        quantization=plan.quantize,
        optimized=dict(plan.to_dict(), source=alias, run=run_id),
        run_id=run_id,
    )


def _finish_run(run, result, folder, *, wall_s: float) -> None:
    """Close the run: metrics, wall time, and the weights file as its checkpoint (with its sha256
    when there is exactly one)."""
    from ..pull import sha256_file

    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".pt"))
    sha = sha256_file(weights[0]) if len(weights) == 1 else None
    run.finish("completed", metrics=result.metrics(), wall_s=wall_s, checkpoint=str(folder), checkpoint_sha256=sha)


def _evaluator(src, req: _Checked):
    """``evaluate(model) -> metrics`` on the checked request's split ``req.ds`` for :func:`optimize_alias`
    (None without a dataset); seq-cls batches are the speed batches' size, so a compiled copy sees the
    batch shape it was compiled for."""
    dv, ds, task = req.dv, req.ds, req.task
    generate, max_length, batch_size = req.opts.generate, req.opts.max_length, req.opts.batch_size
    if ds is None:
        return None
    if task == "seq-cls":
        from ..training.evaluate import evaluate as _evaluate

        return lambda model: _evaluate(
            model,
            src.tokenizer,
            ds,
            text_column=dv.text_column,
            label_column=dv.label_column,
            batch_size=batch_size,
            max_length=max_length,
            label_names=src.labels,
        ).to_metrics()
    if task == "causal-lm":
        if generate:
            from ..training.answers import evaluate_answers

            return lambda model: evaluate_answers(
                model,
                src.tokenizer,
                ds,
                prompt_column=dv.prompt_column,
                response_column=dv.response_column,
                batch_size=16,
                max_length=512,
            ).to_metrics()
        from ..training.sft import evaluate_causal_lm

        return lambda model: evaluate_causal_lm(
            model,
            src.tokenizer,
            ds,
            prompt_column=dv.prompt_column,
            response_column=dv.response_column,
            batch_size=16,
            max_length=max(max_length, 512),
        ).to_metrics()
    from ..models.embedding import embed as _embed
    from ..training.batching import as_text

    texts = [as_text(t) for t in ds[dv.text_column]]
    reference: list = []

    def cosine(model):  # embeddings are L2-normalised: the dot product is the cosine
        vecs = _embed(getattr(model, "base_model", model), src.tokenizer, texts, max_length=max_length)
        if not reference:
            reference.append(vecs)
        return {"cosine_to_original": float((vecs * reference[0]).sum(axis=1).mean())}

    return cosine


def calibration_batches(src, dv, train, *, max_length: int, device: str, seed: int = 0) -> list:
    """The batches on which structured pruning scores heads and neurons: a seeded sample of
    ``CALIBRATION_BATCHES`` × ``CALIBRATION_BATCH_SIZE`` rows of ``train`` (× 8 rows for a
    causal-lm; all of it when smaller), tokenised as the fine-tune reads them (seq-cls: text + class id ``labels (B,)``;
    causal-lm: prompt + response, ``labels (B, T)`` -100 on the prompt and padding), each a dict
    of tensors on ``device``.

    Args:
        src: the model's record (``tokenizer``, ``model``, ``task``). dv: the dataset version
            (its text/label or prompt/response column names). train: its train split as
            ``prepare`` returned it. max_length: tokens per row.

    Raises:
        UsageError: a label outside the model's classes; no response token within max_length.
    """
    import numpy as np

    from ..training.batching import collate, pad_id_for, read_labels, tokenize_column
    from ..training.sft import collate_sft, tokenize_pairs

    bs = CALIBRATION_LM_BATCH_SIZE if src.task == "causal-lm" else CALIBRATION_BATCH_SIZE
    n = min(len(train), CALIBRATION_BATCHES * bs)
    rows = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
    sample = train.select(rows.tolist())
    pad = pad_id_for(src.tokenizer, src.model.config)
    if src.task == "causal-lm":
        pairs = tokenize_pairs(src.tokenizer, sample, dv.prompt_column, dv.response_column, max_length)

        def make(idx):
            return collate_sft(pairs, idx, pad)
    else:
        tok = tokenize_column(src.tokenizer, sample, dv.text_column, max_length)
        labels = read_labels(sample, dv.label_column, src.model.config.num_labels)

        def make(idx):
            return collate(tok, idx, pad, labels)

    idx = np.arange(n)
    return [{k: v.to(device) for k, v in make(idx[i : i + bs]).items()} for i in range(0, n, bs)]


def _recovery(src, req: _Checked):
    """``recover(model) -> summary``: the fine-tune after pruning, on the checked request's
    train split ``req.train`` (``recover_epochs`` epochs at ``recover_lr``)."""
    dv, train, new_alias, epochs = req.dv, req.train, req.new_alias, req.plan.recover_epochs
    lr, max_length, progress = req.opts.recover_lr, req.opts.max_length, req.opts.progress
    from ..training.config import FinetuneConfig
    from ..training.finetune import finetune as _finetune

    lm = src.task == "causal-lm"
    cols = (
        {"prompt_column": dv.prompt_column, "response_column": dv.response_column}
        if lm
        else {"text_column": dv.text_column, "label_column": dv.label_column}
    )

    def recover(model):
        view = None
        if progress:
            from ..widgets.progress import TrainingProgress

            view = TrainingProgress(title=f"recover {new_alias} on {dv.name}")
        cfg = FinetuneConfig(
            epochs=epochs, lr=lr, batch_size=32, seed=0, max_length=max_length, task="causal-lm" if lm else "seq-cls"
        )
        res = _finetune(model, src.tokenizer, train, None, config=cfg, callback=view, **cols)
        if res.status == "interrupted":  # Ctrl-C / Stop inside the fine-tune: the run ends as interrupted
            raise KeyboardInterrupt
        if res.status != "completed":
            raise LLMOSError(f"the recovery fine-tune was {res.status}; nothing was registered")
        last = res.train_loss[-1] if res.train_loss else float("nan")
        return {
            "epochs": epochs,
            "steps": res.steps,
            "train_loss": last,
            "samples_per_s": res.samples_per_s,
            "wall_s": res.wall_s,
        }

    return recover
