"""One rank of a distributed fine-tune: ``python -m llmos_jupyter.training.rank_main SPEC``.

``torchrun`` (or ``accelerate launch``) starts this module once per rank; the kernel never runs
it itself (see :mod:`.launch`). Each rank:

1. reads the spec (``spec.json``, written by :func:`.launch.write_spec`): the model folder (the
   alias's weights as safetensors, a LoRA adapter folder when the alias carries one), the dataset
   version's saved Arrow folder and splits, the :class:`~.config.FinetuneConfig`, where to write;
2. sends its own stdout/stderr to ``<output>/logs/rank<R>.log`` and turns SIGTERM/SIGINT (and the
   end of the supervising kernel) into a stop request, agreed by all ranks at the next step
   boundary, so a cancel leaves a resumable checkpoint;
3. joins the process group (gloo on CPU, nccl on CUDA) and runs :func:`~.finetune.finetune`
   with ``dist=`` — the same loop as one process;
4. on rank 0, appends progress events (JSON lines) to ``<output>/events.jsonl``: ``begin``,
   ``step``, ``eval``, ``end``; any rank that fails appends an ``error`` event with its last
   error line. Exit status: 0 when the run ended (completed or stopped), 1 on an error, 2 on a
   refused input.

Set ``ACCELERATE_USE_FSDP=true`` (``accelerate launch --use_fsdp`` does) or ``"fsdp": true`` in
the spec to shard the model with FSDP2 instead of replicating it with DDP.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from ..errors import LLMOSError

EVENTS = "events.jsonl"


def append_event(path: Path, **event: Any) -> None:
    """Append one JSON line to the events file ``path`` with a single ``write`` (``O_APPEND``:
    lines of several ranks never interleave)."""
    event.setdefault("time", time.time())
    data = (json.dumps(event, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class EventWriter:
    """The ``finetune`` callback of rank 0: every call becomes an event line (see module doc).
    With ``echo`` (a text stream), one line per step / evaluation / end is printed there too
    (a run started from a shell shows its progress)."""

    def __init__(self, path: Path, *, world_size: int, backend: str, fsdp: bool, echo: Any = None):
        self.path, self.echo = path, echo
        self.info = {"world_size": world_size, "backend": backend, "fsdp": fsdp}

    def _say(self, text: str) -> None:
        if self.echo is not None:
            print(text, file=self.echo, flush=True)

    def on_begin(self, total_steps: int, total_samples: int, run_id: Optional[str] = None) -> None:
        append_event(
            self.path, event="begin", total_steps=total_steps, total_samples=total_samples, run_id=run_id, **self.info
        )
        self._say(f"llmos: {self.info['world_size']} ranks ({self.info['backend']}), {total_steps} steps")

    def on_step(self, step: int, loss: float, lr: float, samples_per_s: float, eta_s: float) -> None:
        append_event(self.path, event="step", step=step, loss=loss, lr=lr, samples_per_s=samples_per_s, eta_s=eta_s)
        self._say(f"step {step} loss {loss:.4f} lr {lr:.3g} {samples_per_s:.1f} samples/s")

    def on_eval(self, step: int, epoch: float, metrics: dict[str, Any]) -> None:
        append_event(self.path, event="eval", step=step, epoch=epoch, metrics=metrics)
        self._say(f"eval at step {step}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))

    def on_end(self, status: str, result: Any = None) -> None:
        summary = None
        if result is not None:
            summary = dict(
                result.summary(),
                steps=result.steps,
                total_steps=result.total_steps,
                epochs=result.epochs,
                train_loss=result.train_loss,
                eval_history=result.eval_history,
                best_step=result.best_step,
                stopped_early=result.stopped_early,
            )
        append_event(self.path, event="end", status=status, result=summary)
        where = f"; checkpoint {summary['checkpoint']}" if summary and summary["checkpoint"] else ""
        self._say(f"llmos: {status}{where}")


# ------------------------------------------------------------------------------ the spec
def read_spec(path: os.PathLike | str) -> dict[str, Any]:
    """The spec at ``path`` with its relative paths made absolute (relative to its folder).

    Raises:
        LLMOSError: no such file, or not a spec written by llmos.
    """
    p = Path(path).resolve()
    try:
        spec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise LLMOSError(f"cannot read the launch spec {p}: {e}") from None
    if not isinstance(spec, dict) or spec.get("format") != 1:
        raise LLMOSError(
            f"{p} is not an llmos launch spec (format 1); write one with %llm finetune --export-launch DIR"
        )
    base = p.parent

    def absolute(v: Optional[str]) -> Optional[str]:
        return None if v is None else str((base / v).resolve())

    spec["model"]["path"] = absolute(spec["model"]["path"])
    spec["model"]["adapter"] = absolute(spec["model"].get("adapter"))
    spec["data"]["path"] = absolute(spec["data"]["path"])
    spec["output_dir"] = absolute(spec["output_dir"])
    spec["resume_from"] = absolute(spec.get("resume_from"))
    return spec


def load_model(spec: dict[str, Any], device: str) -> tuple[Any, Any]:
    """The model and tokenizer the spec hands over, on ``device``, loaded like the kernel loads
    a model (:func:`llmos_jupyter.models.loading.load`: same task class, labels, dtype, attention
    and pooling). Weights the kernel had never trained (a new classification head) are absent
    from the folder, so :func:`~.finetune.finetune` initialises them from the run seed as it
    would in the kernel. A LoRA adapter folder is put back on top, trainable."""
    from ..models.loading import load, quiet_transformers

    m = spec["model"]
    loaded = load(
        m["path"],
        task=spec["task"],
        labels=m.get("labels"),
        dtype=m.get("dtype"),
        device=device,
        attn_implementation=m.get("attn_implementation"),
    )
    model = loaded.model
    modules = dict(model.named_modules())
    for name, idx in (m.get("padding_idx") or {}).items():  # as the kernel's model has them
        if name in modules:
            modules[name].padding_idx = idx
    if m.get("adapter"):
        from peft import PeftModel

        with quiet_transformers():
            model = PeftModel.from_pretrained(model, m["adapter"], is_trainable=True)
    return model, loaded.tokenizer


def load_data(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(train, eval or None) ``datasets.Dataset``s of the spec's dataset version, read from its
    saved Arrow folder, with the class ids mapped to the model's as the kernel maps them."""
    from datasets import load_from_disk

    d = spec["data"]
    dd = load_from_disk(d["path"])
    mapping, col = d.get("label_map"), d.get("label_column")

    def prepared(split: Optional[str]) -> Any:
        if split is None:
            return None
        ds = dd[split]
        if mapping is not None:
            ds = ds.map(lambda b: {col: [mapping[x] for x in b[col]]}, batched=True, keep_in_memory=True)
        return ds

    return prepared(d["train_split"]), prepared(d.get("eval_split"))


def columns(spec: dict[str, Any]) -> dict[str, str]:
    """The ``finetune`` column arguments for the spec's task."""
    d = spec["data"]
    if spec["task"] == "causal-lm":
        return {"prompt_column": d["prompt_column"], "response_column": d["response_column"]}
    return {"text_column": d["text_column"], "label_column": d["label_column"]}


# ------------------------------------------------------------------------------ main
def _redirect_output(log: Path) -> Any:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C++ messages too) to
    ``log``; return a text stream on the original stdout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    original = os.fdopen(os.dup(1), "w", buffering=1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    return original


def _watch(stop: threading.Event, supervisor: Optional[int], host: Optional[str]) -> None:
    """Stop when the supervising kernel process (``supervisor`` on ``host``) is gone: a kernel
    restart leaves no orphan run. Ranks on other machines (nodes) have nothing to watch."""
    import socket

    if not supervisor or host != socket.gethostname():
        return
    import psutil

    try:
        born = psutil.Process(supervisor).create_time()
    except psutil.Error:
        stop.set()
        return

    def loop() -> None:
        while not stop.wait(1.0):
            try:
                if psutil.Process(supervisor).create_time() != born:
                    break
            except psutil.Error:
                break
        stop.set()

    threading.Thread(target=loop, daemon=True, name="llmos-supervisor-watch").start()


def main(argv: Optional[list[str]] = None) -> int:
    """Run this rank. ``argv``: ``[SPEC]``. Returns the exit status (module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m llmos_jupyter.training.rank_main SPEC.json (started by torchrun)", file=sys.stderr)
        return 2
    spec = read_spec(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    events = out / EVENTS
    echo = _redirect_output(out / "logs" / f"rank{rank}.log")
    print(f"llmos rank {rank}: pid {os.getpid()}, spec {argv[0]}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    _watch(stop, spec.get("supervisor_pid"), spec.get("supervisor_host"))
    group = None
    try:
        import torch

        from .distributed import RankGroup
        from .finetune import finetune

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        backend = spec.get("backend") or ("nccl" if torch.cuda.is_available() else "gloo")
        fsdp = bool(spec.get("fsdp")) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        t0 = time.perf_counter()
        group = RankGroup.from_env(backend, fsdp=fsdp)
        t1 = time.perf_counter()
        model, tokenizer = load_model(spec, str(group.device))
        train, ev = load_data(spec)
        print(
            f"llmos rank {rank}: joined {group.world_size} ranks ({backend}{', fsdp' if fsdp else ''}) in "
            f"{t1 - t0:.1f} s; model and data read in {time.perf_counter() - t1:.1f} s",
            flush=True,
        )
        cfg = spec["config"]
        if group.world_size > len(train):
            raise LLMOSError(f"{group.world_size} ranks for {len(train)} training rows; use at most {len(train)} ranks")
        if group.world_size > cfg["batch_size"]:
            raise LLMOSError(
                f"{group.world_size} ranks share global batches of {cfg['batch_size']} rows; "
                f"use --batch-size {group.world_size} or more, or fewer ranks"
            )
        writer = None
        if group.main:
            writer = EventWriter(
                events, world_size=group.world_size, backend=backend, fsdp=fsdp, echo=echo if spec.get("echo") else None
            )
        res = finetune(
            model,
            tokenizer,
            train,
            ev,
            **columns(spec),
            config=cfg,
            callback=writer,
            run_dir=out,
            should_stop=lambda: group.any(stop.is_set()),
            run_id=spec.get("run_id"),
            resume_from=spec.get("resume_from"),
            dist=group,
        )
        print(f"llmos rank {rank}: {res.status} after {res.steps}/{res.total_steps} steps", flush=True)
        return 0
    except BaseException as e:  # noqa: BLE001 - the last line of the log is the rank's reason
        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        line = first if isinstance(e, LLMOSError) else f"{type(e).__name__}: {first}".rstrip(": ")[:300]
        print(f"llmos rank {rank} failed: {line}", flush=True)
        append_event(events, event="error", rank=rank, pid=os.getpid(), error=line, refused=isinstance(e, LLMOSError))
        return 2 if isinstance(e, LLMOSError) else 1
    finally:
        if group is not None:
            try:
                group.close()
            except Exception:  # noqa: BLE001 - a dead peer: nothing left to close cleanly
                pass


def run(argv: Optional[list[str]] = None) -> None:
    """:func:`main`, then end the process at once with its status: everything is written and
    flushed by then, and the interpreter's teardown (about a second with torch loaded) would only
    delay the end of a cancelled run."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
