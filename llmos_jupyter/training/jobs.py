"""What ``llmos_jupyter.api.finetune`` does around the training loop: the dataset splits it trains
and evaluates on, the notes it prints, the job that runs it and the progress it reports.

The API keeps the state (manager, store, registry, scheduler) and passes what these helpers need;
nothing here holds state of its own.
"""

from __future__ import annotations

import sys
import time

from ..errors import UsageError, opt
from ..resources.memory import format_size


def label_ids(rec, dv):
    """Map the dataset's labels to the model's label ids; raise one line on a mismatch."""
    model_labels = list(rec.labels or [])
    names = dv.label_names
    if names:
        missing = [n for n in names if n not in model_labels]
        if missing:
            if len(names) == len(model_labels) and all(str(n).isdigit() for n in names):
                return None
            raise UsageError(
                f"dataset labels {missing} are not among the model's labels {model_labels}; "
                f"reload with `--labels {','.join(names)}` or map them with "
                f"`%llm data clean NAME --label-map OLD=NEW`"
            )
        mapping = [model_labels.index(n) for n in names]
        return None if mapping == list(range(len(names))) else mapping
    return None


def prepare_split(dv, split: str, rec):
    if dv.label_column is None:
        raise UsageError(f"dataset '{dv.name}' has no label column; set it with `%llm data load ... --label COLUMN`")
    if split not in dv.splits:
        raise UsageError(
            f"dataset '{dv.name}' has no '{split}' split (it has {', '.join(dv.splits)}); "
            f"make one with `%llm data split {dv.name} --test 0.15`"
        )
    ds = dv.splits[split]
    mapping = label_ids(rec, dv)
    if mapping is not None:
        col = dv.label_column
        ds = ds.map(lambda b: {col: [mapping[x] for x in b[col]]}, batched=True, keep_in_memory=True)
    n_model = len(rec.labels or [])
    values = ds[dv.label_column]
    missing = sum(1 for x in values if x is None or int(x) < 0)  # -1: ClassLabel's "no label" (an empty CSV cell)
    if missing:
        raise UsageError(
            f"{missing} of {len(values)} rows of '{dv.name}' ({split}) have no label; drop them with "
            f"`%llm data clean {dv.name}` (rows without a label or text are dropped), then train on the "
            f"new version"
        )
    bad = [x for x in set(values) if not 0 <= int(x) < n_model]
    if bad:
        raise UsageError(
            f"label values {sorted(map(str, bad))[:5]} are outside the model's {n_model} labels "
            f"{rec.labels}; reload with matching --labels"
        )
    return ds


def prepare_sft_split(dv, split: str):
    """The ``split`` of a prompt/response dataset for causal-lm fine-tuning or evaluation."""
    if not dv.prompt_column or not dv.response_column:
        cols = ", ".join(dv.splits[next(iter(dv.splits))].column_names)
        raise UsageError(
            f"dataset '{dv.name}' has no prompt/response columns (it has {cols}); "
            f"a causal-lm needs prompt/response columns: name them so, or make them with "
            f'`%llm data prompt {dv.name} --prompt "Review: {{text}}\\nSentiment:" '
            f'--response "{{label}}"`'
        )
    if split not in dv.splits:
        raise UsageError(
            f"dataset '{dv.name}' has no '{split}' split (it has {', '.join(dv.splits)}); "
            f"make one with `%llm data split {dv.name} --test 0.15`"
        )
    return dv.splits[split]


class JobProgress:
    """Training callback that feeds a job's fields (and so the side panel) and, optionally, the
    notebook progress view; events are throttled to ≤ 4 per second."""

    def __init__(self, job, view=None, min_interval_s: float = 0.25, *, scheduler):
        self.job, self.view, self.min_interval_s, self._last = job, view, min_interval_s, 0.0
        self.scheduler = scheduler

    def _view(self, name, *args):
        fn = getattr(self.view, name, None)
        if fn is not None:
            fn(*args)

    def on_begin(self, total_steps, total_samples, run_id=None):
        self.scheduler.update(self.job, total_steps=total_steps)
        self._view("on_begin", total_steps, total_samples, run_id)

    def on_step(self, step, loss, lr, samples_per_s, eta_s):
        j = self.job
        j.step, j.loss, j.samples_per_s, j.eta_s = step, loss, samples_per_s, eta_s
        j.progress = step / j.total_steps if j.total_steps else 0.0
        now = time.monotonic()
        if now - self._last >= self.min_interval_s or step == j.total_steps:
            self._last = now
            self.scheduler.update(j)
        self._view("on_step", step, loss, lr, samples_per_s, eta_s)

    def on_eval(self, step, epoch, metrics):
        self._view("on_eval", step, epoch, metrics)

    def on_end(self, status, result=None):
        self._view("on_end", status, result)


def warmup_note(cfg, rows: int) -> list[str]:
    """A note when the linear warmup (``ceil(warmup_ratio * steps)`` steps, as
    ``transformers.get_linear_schedule_with_warmup`` is used by the Trainer) takes every step of
    the run: the learning rate never reaches ``lr``, and a one-step run learns nothing (its only
    step has learning rate 0)."""
    import math

    steps = math.ceil(math.ceil(rows / cfg.batch_size) / cfg.grad_accum) * cfg.epochs
    steps = min(steps, cfg.max_steps) if cfg.max_steps is not None else steps
    if cfg.warmup_ratio <= 0 or math.ceil(cfg.warmup_ratio * steps) < steps:
        return []
    what = (
        "its only step has learning rate 0, so nothing is learned"
        if steps == 1
        else f"the learning rate never reaches {opt('lr', cfg.lr)}"
    )
    return [
        f"llmos: note: the warmup takes all {steps} optimizer step{'s' if steps > 1 else ''} of this run "
        f"({opt('warmup_ratio', cfg.warmup_ratio)}, rounded up): {what}; give {opt('warmup_ratio', 0.0)} "
        f"or more steps"
    ]


def launch_config(nproc, nnodes, backend, launcher, fsdp, rdzv_endpoint, export_launch, resume):
    """The :class:`~llmos_jupyter.training.launch.LaunchConfig` of a distributed fine-tune, or
    None for a run in the kernel; launch flags without ``--nproc``/``--export-launch`` are refused."""
    given = [
        f
        for f, v in (
            ("--nnodes", nnodes),
            ("--backend", backend),
            ("--launcher", launcher),
            ("--fsdp", fsdp),
            ("--rdzv-endpoint", rdzv_endpoint),
        )
        if v
    ]
    if nproc is None and export_launch is None:
        if given:
            raise UsageError(
                f"{given[0]} goes with --nproc N (ranks in subprocesses) or --export-launch DIR; add one of them"
            )
        return None
    if export_launch is not None and resume is not None:
        raise UsageError(
            "--export-launch writes a new run for a cluster; drop --resume (or drop --export-launch to resume here)"
        )
    from .launch import LaunchConfig

    return LaunchConfig(
        nproc=1 if nproc is None else nproc,
        nnodes=1 if nnodes is None else nnodes,
        backend=backend,
        launcher=launcher or "torchrun",
        fsdp=bool(fsdp),
        rdzv_endpoint=rdzv_endpoint,
    )


def run_job(scheduler, job, work, background: bool, notes: list[str]):
    """Run a fine-tune's ``work`` as ``job`` on ``scheduler`` (a
    :class:`~llmos_jupyter.resources.jobs.JobScheduler`): in a background thread (the job, at once) or here
    (its result); ``notes`` go to stderr when the job starts in the background, else after the
    run, so that a refused input stays one line."""
    if background:
        for note in notes:
            print(note, file=sys.stderr)
        return scheduler.submit(job, work)
    result = scheduler.run_here(job, work)
    for note in notes:
        print(note, file=sys.stderr)
    return result


def serve_trained(m, rec, run_dir) -> None:
    """After a fine-tune of a llama.cpp alias: write the trained (LoRA-merged) model as an f16
    GGUF into the run's folder and hot-swap it in, so chat answers with the new weights."""
    from pathlib import Path

    from ..models.gguf_export import export_gguf

    path = Path(run_dir) / "model-f16.gguf"
    try:
        info = export_gguf(rec.model, rec.tokenizer, path, quantize="f16", source_gguf=rec.gguf_path)
    except UsageError as e:  # an architecture GGUF export does not take: the trained run still stands
        print(
            f"llmos: note: {rec.alias} keeps serving its original GGUF on llama.cpp ({e}); the trained weights "
            f"answer with {opt('engine', 'transformers')} and export with {opt('format', 'hf')}",
            file=sys.stderr,
            flush=True,
        )
        return
    m.swap_gguf(rec, str(path))
    print(
        f"llmos: {rec.alias} now serves the fine-tuned weights on llama.cpp ({path}, {format_size(info['bytes'])})",
        flush=True,
    )


def account_trained(m, rec, run_dir, completed: bool) -> None:
    """After a fine-tune changed the weights of ``rec`` (a manager record held by the job): measure
    its tensor bytes again (the GGUF context of a llama.cpp alias too) and, when the run
    ``completed`` on a llama.cpp alias, serve the trained weights there (:func:`serve_trained`)."""
    from ..resources.memory import module_bytes

    rec.bytes = module_bytes(rec.model)
    if rec.engine == "llama.cpp":  # its GGUF context too
        rec.bytes["cpu"] = rec.bytes.get("cpu", 0) + rec.server.footprint()["tensor_bytes"]["cpu"]
        if completed:
            serve_trained(m, rec, run_dir)
