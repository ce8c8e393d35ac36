"""The before/after driver of ``%llm optimize``: copy a model, apply the techniques in order
(prune → recover → quantize → compile), measure both, and build the comparison table.

The original model is never changed: the techniques work on a deep copy (LoRA adapters merged
into it, the marks of trained parameters carried over so a recovery fine-tune does not
re-initialise a trained head). Both columns are measured by :func:`~.measure.sample` in the same
process, the same way; the *resident* figures are the RSS growth of building the copy (before:
the plain copy; after: the copy once every technique, compilation included, has run), measured
the way the resource manager measures a load.

>>> plan = check_plan(quantize="int8", task="seq-cls", device="cpu")    # doctest: +SKIP
>>> result = run(model, tok, plan, task="seq-cls", batches=batches)      # doctest: +SKIP
>>> result.table("minilm", "minilm-int8")                                # doctest: +SKIP
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..display import Table
from ..errors import UsageError
from ..resources.memory import format_size
from . import compile as compile_mod
from . import prune as prune_mod
from . import quantize as quantize_mod
from .measure import Sample, first_pass, sample, save_weights

MAX_RECOVER_EPOCHS = 20


@dataclass
class Plan:
    """What to apply, validated by :func:`check_plan`.

    Attributes:
        quantize: a level of :data:`.quantize.LEVELS` or None.
        prune: share to remove in (0, 1) or None.
        structured: ``("heads",)``, ``("ffn",)``, both, or None (magnitude pruning).
        compile: compile with ``torch.compile``.
        recover_epochs: epochs of fine-tuning after pruning (0: none).
    """

    quantize: str | None = None
    prune: float | None = None
    structured: tuple | None = None
    compile: bool = False
    recover_epochs: int = 0

    def suffix(self) -> str:
        """Alias suffix: ``int8``, ``p30``, ``p30h``, ``p30f-r1``, ``c`` ... joined by ``-``."""
        parts = []
        if self.prune:
            # "p30"; never rounded into another amount (0.999999 is p99.9999, not p100)
            parts.append(f"p{self.prune * 100:g}" + "".join(p[0] for p in (self.structured or ())))
        if self.recover_epochs:
            parts.append(f"r{self.recover_epochs}")
        if self.quantize:
            parts.append(self.quantize.replace("-weight", "w"))
        if self.compile:
            parts.append("compiled")
        return "-".join(parts)

    def describe(self) -> str:
        """``"prune 30% (heads, ffn) + 1 recovery epoch + int8 + compile"``."""
        parts = []
        if self.prune:
            how = ", ".join(self.structured) if self.structured else "magnitude"
            parts.append(f"prune {self.prune * 100:g}% ({how})")
        if self.recover_epochs:
            parts.append(f"{self.recover_epochs} recovery epoch{'s' if self.recover_epochs > 1 else ''}")
        if self.quantize:
            parts.append(self.quantize)
        if self.compile:
            parts.append("compile")
        return " + ".join(parts)

    def to_dict(self) -> dict:
        return {
            "quantize": self.quantize,
            "prune": self.prune,
            "structured": list(self.structured or []) or None,
            "compile": self.compile,
            "recover_epochs": self.recover_epochs,
        }


def check_plan(
    *,
    quantize: str | None = None,
    prune: Any = None,
    structured: Any = None,
    compile: bool = False,
    recover_epochs: Any = 0,
    task: str = "seq-cls",
    device: str = "cpu",
    model: Any = None,
    optimized: dict | None = None,
) -> Plan:
    """Validate every option before anything runs (one line each).

    Args:
        model: the model to optimise, to refuse what it already carries (int8 of int8, a
            compiled model).
        optimized: the recipe of an alias made by ``optimize``, if it is one.

    Raises:
        UsageError: nothing to do; an unknown level or structure; a level this device does not
            run; a prune amount outside (0, 1); ``structured`` or ``recover_epochs`` without
            ``prune``; negative or too many epochs; a model already quantised or compiled.
    """
    if isinstance(quantize, str):
        quantize = quantize.strip().lower()
    if not quantize and prune is None and not structured and not compile:
        raise UsageError(
            "nothing to do: give --quantize LEVEL, --prune AMOUNT [--structured heads|ffn] "
            "and/or --compile (see `%llm help optimize`)"
        )
    if quantize:
        quantize_mod.check(quantize, device)
    amount = prune_mod.check_amount(prune) if prune is not None else None
    parts = prune_mod.parse_structures(structured) if structured else None
    if parts and amount is None:
        raise UsageError(
            "--structured says which parts to prune; add --prune AMOUNT, e.g. --prune 0.3 --structured heads"
        )
    try:
        epochs = int(recover_epochs or 0)
    except (TypeError, ValueError):
        raise UsageError(f"--recover-epochs takes a whole number of epochs, got '{recover_epochs}'") from None
    if epochs < 0 or epochs > MAX_RECOVER_EPOCHS or epochs != float(recover_epochs or 0):
        raise UsageError(f"--recover-epochs takes 0 to {MAX_RECOVER_EPOCHS} whole epochs, got {recover_epochs}")
    if epochs and amount is None:
        raise UsageError("--recover-epochs fine-tunes after pruning; add --prune AMOUNT (or drop --recover-epochs)")
    if task not in ("seq-cls", "causal-lm", "embedding"):
        raise UsageError(f"optimize takes seq-cls, causal-lm and embedding models, not {task}")
    if parts and model is not None:
        prune_mod.check_structured(model, amount, parts)
    if model is not None:
        have = quantize_mod.current(model)
        if quantize and have is not None:
            raise UsageError(
                f"this model is already quantised ({have}); optimise its float original instead "
                f"(int8 of int8 only adds error)"
            )
        if amount is not None and have in ("int8", "torchao"):
            raise UsageError(
                f"this model's weights are quantised ({have}); prune its float original, then "
                f"quantise in the same call (--prune {amount:g} --quantize LEVEL)"
            )
        if compile_mod.is_compiled(model) or (optimized or {}).get("compile"):
            raise UsageError("this model is already compiled; optimise its original, adding --compile")
    return Plan(quantize=quantize or None, prune=amount, structured=parts, compile=bool(compile), recover_epochs=epochs)


def clone(model: Any) -> Any:
    """A deep copy of ``model`` to optimise: LoRA adapters merged into the weights (peft's
    ``merge_and_unload``), the trained/loaded marks of every parameter carried over (a deep copy
    drops them, and a fine-tune would then re-initialise a trained classification head)."""
    new = copy.deepcopy(model)
    if hasattr(new, "merge_and_unload") and hasattr(new, "peft_config"):
        new = new.merge_and_unload()
    carry_marks(model, new)
    new.eval()
    return new


def carry_marks(src: Any, dst: Any) -> None:
    """Copy ``_is_hf_initialized`` / ``_llmos_trained`` from ``src``'s parameters to ``dst``'s
    parameters of the same name (peft's ``base_model.model.`` prefix ignored)."""

    def norm(n: str) -> str:
        return n.replace("base_model.model.", "").replace(".base_layer", "")

    marks = {
        norm(n): {k: getattr(p, k) for k in ("_is_hf_initialized", "_llmos_trained") if hasattr(p, k)}
        for n, p in src.named_parameters()
    }
    for n, p in dst.named_parameters():
        for k, v in marks.get(norm(n), {}).items():
            setattr(p, k, v)


def prepare(plan: Plan) -> None:
    """Import (and for int8, run once on a 4x4 layer) what ``plan``'s techniques use, so the
    memory those libraries take the first time is not counted as the optimised model's (as
    the manager imports a model's libraries before it measures a load)."""
    import torch

    if plan.quantize == "int8" and not torch.cuda.is_available():
        tiny = torch.nn.Sequential(torch.nn.Linear(4, 4))
        quantize_mod._quantize_dynamic(tiny)
        with torch.inference_mode():
            tiny(torch.zeros(1, 4))
    elif plan.quantize in quantize_mod.TORCHAO_LEVELS or plan.quantize == "int8":
        quantize_mod._torchao()
    if plan.prune is not None:
        import torch.nn.utils.prune
        import transformers.pytorch_utils  # noqa: F401  (side effect: loaded before the timing starts)
    if plan.compile:
        import torch._dynamo
        import torch._inductor


def _usage(device: str) -> dict:
    from ..resources import manager as _manager  # the manager's own measurement (RSS / CUDA reserved)

    return _manager._real_usage(device)


def _resident(before: dict, after: dict, model: Any, device: str) -> int:
    from ..resources import manager as _manager
    from ..resources.memory import module_bytes

    tensors = module_bytes(model)
    return int(_manager._real_delta(before, after, tensors, sum(tensors.values())).get(device, 0))


@dataclass
class Result:
    """What :func:`run` measured and made.

    Attributes:
        before / after: :class:`~.measure.Sample` of the original and of the optimised copy.
        model: the optimised copy. info: per technique, what it reported (``prune``,
            ``recover``, ``quantize``, ``compile``). compile_s: first pass − a timed pass
            (None without ``compile``). plan: the :class:`Plan`.
    """

    before: Sample
    after: Sample
    model: Any
    plan: Plan
    info: dict = field(default_factory=dict)
    compile_s: float | None = None

    def metrics(self) -> dict:
        """Flat numbers for the run registry: ``before.X`` / ``after.X`` for every measured
        field and metric, plus ``accuracy`` / ``macro_f1`` (after) when measured."""
        out: dict = {}
        for tag, s in (("before", self.before), ("after", self.after)):
            d = s.to_dict()
            for k, v in d.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{tag}.{k}"] = v
            for k, v in s.metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{tag}.{k}"] = v
        for k in ("accuracy", "macro_f1"):
            if k in self.after.metrics:
                out[k] = self.after.metrics[k]
        if self.compile_s is not None:
            out["compile_s"] = self.compile_s
        return out

    def table(
        self,
        src_alias: str,
        new_alias: str,
        *,
        task: str,
        batch_size: int,
        threads: int,
        rows_evaluated: int | None = None,
        split: str | None = None,
        run_id: str | None = None,
    ) -> Table:
        """The before/after table (see :func:`report_rows`); ``table.data`` holds raw numbers."""
        rows, data = report_rows(self, task=task, batch_size=batch_size, split=split)
        notes = [f"{self.plan.describe()}; {threads} threads"]
        if rows_evaluated is not None:
            notes.append(f"metrics on {rows_evaluated:,} rows of {split}")
        q = self.info.get("quantize")
        if q:
            notes.append(f"quantize: {q['backend']}")
        p = self.info.get("prune")
        if p and p.get("scores"):
            notes.append(f"heads/neurons ranked by {p['scores']}")
        if p and p.get("method") == "magnitude":
            notes.append(
                "magnitude pruning leaves the matrices dense: zeros are multiplied like any number, "
                "so it saves no time and no memory (only a compressed file shrinks)"
            )
        c = self.info.get("compile")
        if c:
            notes.append(f"compile: {c['what']}, compile time = first pass - a timed pass")
        notes.append(f"resident: RSS growth while building the model (the tokenizer is shared with '{src_alias}')")
        if run_id:
            notes.append(f"run {run_id}")
        t = Table(
            f"optimize {src_alias} -> {new_alias}",
            ["", src_alias, new_alias, "change"],
            rows,
            note="; ".join(notes),
            data=data,
        )
        t.result, t.run_id, t.alias = self, run_id, new_alias
        return t


def _ratio(b: float | None, a: float | None, *, smaller_better: bool, word: str) -> str:
    if not b or not a:
        return "-"
    r = b / a if smaller_better else a / b
    return f"{r:.2f}x {word}" if r >= 1 else f"{1 / r:.2f}x {'larger' if word == 'smaller' else 'slower'}"


def _change(kind: str, b: Any, a: Any) -> str:
    """The change column of a size or speed row, by the row's kind of measure.

    Args:
        kind: ``count`` (percent change, ``same`` when equal), ``size`` (bytes: ``2.00x smaller``),
            ``time`` (seconds or ms: ``2.00x faster``), ``rate`` (per second: ``2.00x faster``).
        b / a: the measure before / after (None when not measured: ``-`` for ratios).
    """
    if kind == "count":
        pct = (a - b) / b * 100 if b else 0.0
        return "same" if a == b else f"{pct:+.1f}%"
    if kind == "size":
        return _ratio(b, a, smaller_better=True, word="smaller")
    return _ratio(b, a, smaller_better=kind == "time", word="faster")


# the size and speed rows of the table: (measure, Sample field, cell format, kind of change for
# _change); the measure may name {batch_size}
_SIZE_ROWS = (
    ("parameters", "params", lambda v: f"{v / 1e6:.2f}M", "count"),
    ("linear weights", "linear_bytes", format_size, "size"),
    ("file size (weights)", "disk_bytes", format_size, "size"),
    ("resident (RSS growth)", "resident_bytes", format_size, "size"),
)
_DECODE_ROWS = (  # causal-lm
    ("tokens/s (greedy decode)", "tokens_per_s", lambda v: f"{v:.1f}", "rate"),
    ("time to first token", "ttft_s", lambda v: f"{v * 1000:.0f} ms", "time"),
)
_FORWARD_ROWS = (  # seq-cls, embedding
    ("latency per batch of {batch_size}", "latency_ms", lambda v: f"{v:.1f} ms", "time"),
    ("samples/s", "samples_per_s", lambda v: f"{v:.1f}", "rate"),
)


def report_rows(result: Result, *, task: str, batch_size: int, split: str | None = None) -> tuple[list, list]:
    """``(rows, data)`` of the table: formatted cells and ``{"measure", "before", "after",
    "change"}`` dicts with the raw numbers (bytes, ms, samples/s, metric values)."""
    b, a = result.before, result.after
    rows: list = []
    data: list = []

    def add(name, vb, va, fmt, change):
        rows.append([name, "-" if vb is None else fmt(vb), "-" if va is None else fmt(va), change])
        data.append({"measure": name, "before": vb, "after": va, "change": change})

    for name, attr, fmt, kind in _SIZE_ROWS + (_DECODE_ROWS if task == "causal-lm" else _FORWARD_ROWS):
        vb, va = getattr(b, attr), getattr(a, attr)
        add(name.format(batch_size=batch_size), vb, va, fmt, _change(kind, vb, va))
    for row in _metric_rows(b, a, split) + _technique_rows(result):
        add(*row)
    return rows, data


def _metric_rows(b: Sample, a: Sample, split: str | None) -> list:
    """The rows of the metrics measured on both (``n`` and ``tokens`` left out): accuracy,
    macro_f1 and valid change in points, the others by their difference.

    Returns:
        ``(measure, before, after, format, change)`` tuples for :func:`report_rows`.
    """
    where = f" ({split})" if split else ""
    out = []
    for k, vb in b.metrics.items():
        va = a.metrics.get(k)
        if not isinstance(vb, (int, float)) or isinstance(vb, bool) or k in ("n", "tokens") or va is None:
            continue
        if k in ("accuracy", "macro_f1", "valid"):
            change = f"{(va - vb) * 100:+.2f} points"
        else:
            change = f"{va - vb:+.4f}"
        out.append((f"{k}{where}", vb, va, lambda v: f"{v:.4f}", change))
    return out


def _technique_rows(result: Result) -> list:
    """The rows of what the techniques did: sparsity and heads / FFN neurons per layer (prune),
    the recovery fine-tune, the compile time.

    Returns:
        ``(measure, before, after, format, change)`` tuples for :func:`report_rows`.
    """
    b, a = result.before, result.after
    out = []
    if result.plan.prune:
        points = f"{(a.sparsity - b.sparsity) * 100:+.1f} points"
        out.append(("sparsity (hidden linear weights)", b.sparsity, a.sparsity, lambda v: f"{v * 100:.1f}%", points))
        p = result.info.get("prune", {})
        for name, part in (("attention heads per layer", "heads"), ("FFN neurons per layer", "ffn")):
            if f"{part}_before" in p:
                vb, va = p[f"{part}_before"], p[f"{part}_after"]
                out.append((name, vb, va, str, f"-{vb - va}"))
    r = result.info.get("recover")
    if r:
        done = f"{r['epochs']} epoch(s), {r['steps']} steps, final train loss {r['train_loss']:.4f}"
        out.append(("recovery fine-tune", None, r["wall_s"], lambda v: f"{v:.1f} s", done))
    if result.compile_s is not None:
        out.append(("compile time", None, result.compile_s, lambda v: f"{v:.1f} s", "once per process"))
    return out


def run(
    model: Any,
    tokenizer: Any,
    plan: Plan,
    *,
    task: str,
    batches: list | None = None,
    prompt: str = "",
    evaluate: Callable[[Any], dict] | None = None,
    recover: Callable[[Any], dict] | None = None,
    calibration: list | None = None,
    folder: Path | None = None,
    auto_class: str = "",
    repeats: int = 3,
    max_new_tokens: int = 32,
    notify: Callable[[str], None] = lambda m: None,
) -> Result:
    """Measure ``model``, build the optimised copy, measure it.

    Args:
        model / tokenizer: the original (left as it is).
        plan: from :func:`check_plan`.
        task: ``seq-cls`` | ``embedding`` (forward speed over ``batches``) | ``causal-lm``
            (decode speed of ``prompt``).
        evaluate: ``evaluate(model) -> metrics`` on the named split, run on both.
        recover: ``recover(model) -> {"epochs", "steps", "train_loss", "samples_per_s",
            "wall_s"}``, the fine-tune after pruning (required when ``plan.recover_epochs``).
        calibration: batches with labels on which structured pruning scores heads and neurons
            (:func:`.prune.taylor_scores`); None: weight magnitudes.
        folder: where the optimised weights are written (their size is the *after* file
            size); the original's are written to a temporary folder and removed.
        auto_class: the transformers Auto class name of the task (for quantised saves).
        repeats / max_new_tokens: see :mod:`.measure`.
        notify: called with one line per phase (for long runs).

    Returns:
        :class:`Result`. On any error the copy is dropped and the original is untouched.
    """
    device = str(next(model.parameters()).device)
    kw = dict(
        task=task, batches=batches, prompt=prompt, repeats=repeats, max_new_tokens=max_new_tokens, evaluate=evaluate
    )
    notify("measuring the original")
    before = sample(model, tokenizer, **kw)
    prepare(plan)
    u0 = _usage(device)
    new = clone(model)
    before.resident_bytes = _resident(u0, _usage(device), new, device)
    with tempfile.TemporaryDirectory(prefix="llmos-optimize-") as tmp:
        before.disk_bytes, before.files = save_weights(new, Path(tmp), auto_class=auto_class, level=None)
    info: dict = {}
    if plan.prune is not None:
        notify(f"pruning {plan.prune * 100:g}%")
        if plan.structured:
            info["prune"] = prune_mod.structured(new, plan.prune, plan.structured, calibration=calibration)
        else:
            info["prune"] = prune_mod.magnitude(new, plan.prune)
    if plan.recover_epochs:
        if recover is None:
            raise UsageError("--recover-epochs needs training data: name it with --eval DATA (its train split)")
        notify(f"recovery fine-tune, {plan.recover_epochs} epoch(s)")
        info["recover"] = recover(new)
        new.eval()
    if plan.quantize:
        notify(f"quantizing ({plan.quantize})")
        info["quantize"] = quantize_mod.quantize(new, plan.quantize)
    warm_s = None
    if plan.compile:
        info["compile"] = compile_mod.compile_model(new, task)
        notify("compiling (first pass)")
        warm_s = first_pass(new, tokenizer, task=task, batches=batches, prompt=prompt, max_new_tokens=max_new_tokens)
    resident = _resident(u0, _usage(device), new, device)
    notify("measuring the optimised copy")
    after = sample(
        new, tokenizer, folder=folder, auto_class=auto_class, level=plan.quantize, resident_bytes=resident, **kw
    )
    compile_s = None
    if warm_s is not None:
        after.first_pass_s = warm_s
        compile_s = max(0.0, warm_s - (after.pass_s or 0.0))
    return Result(before=before, after=after, model=new, plan=plan, info=info, compile_s=compile_s)
