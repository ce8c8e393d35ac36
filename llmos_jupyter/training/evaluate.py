"""Evaluate a sequence classifier on a labelled dataset: accuracy, macro-F1, per-class
precision/recall/F1, confusion matrix and the most confident mistakes.

>>> r = evaluate(model, tokenizer, ds, text_column="text", label_column="label")  # doctest: +SKIP
>>> r.accuracy, r.macro_f1                                                         # doctest: +SKIP

Definitions (the same as scikit-learn's ``classification_report`` with ``zero_division=0``,
https://scikit-learn.org/stable/modules/model_evaluation.html#precision-recall-f-measure-metrics):
for class c with true positives TP_c, false positives FP_c and false negatives FN_c,
precision_c = TP_c / (TP_c + FP_c), recall_c = TP_c / (TP_c + FN_c),
F1_c = 2·precision_c·recall_c / (precision_c + recall_c), each 0 when its denominator is 0.
macro_f1 = unweighted mean of F1_c over the classes that occur in the true labels or the
predictions (sklearn's ``f1_score(average="macro")``); accuracy = correct / rows.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .batching import as_text, check_columns, collate, pad_id_for, read_labels, tokenize_column


@dataclass
class EvalResult:
    """What :func:`evaluate` measured. Numbers are plain Python floats/ints (JSON-safe).

    Attributes:
        accuracy: correct / n, in [0, 1].
        macro_f1: mean per-class F1 over classes present in labels or predictions, in [0, 1].
        loss: mean cross-entropy (nats per row) of the logits against the labels.
        n: rows evaluated.
        label_names: class names, index = class id.
        per_class: one dict per class: label, precision, recall, f1, support (true rows).
        confusion: ``(C, C)`` counts, rows = true class, columns = predicted class.
        worst: up to ``worst_k`` misclassified rows, most confident first: row (index in the
            dataset), text, label, predicted, confidence (softmax probability of the prediction).
        predictions: ``(n,)`` predicted class ids.
        logits: ``(n, C)`` float32 logits, in dataset order.
        wall_s: seconds spent, tokenisation included.
    """

    accuracy: float
    macro_f1: float
    loss: float
    n: int
    label_names: list[str]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    worst: list[dict[str, Any]]
    predictions: np.ndarray = field(repr=False)
    logits: np.ndarray = field(repr=False)
    wall_s: float = 0.0

    def to_metrics(self) -> dict[str, Any]:
        """Headline numbers for registries and manifests: accuracy, macro_f1, loss, n."""
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": self.loss, "n": self.n}

    def to_dict(self) -> dict[str, Any]:
        """Everything except the arrays, JSON-serialisable."""
        d = self.to_metrics()
        d.update(
            label_names=self.label_names,
            per_class=self.per_class,
            confusion=self.confusion,
            worst=self.worst,
            wall_s=self.wall_s,
        )
        return d

    # ------------------------------------------------------------------ rendering
    def __str__(self) -> str:
        w = max([len(n) for n in self.label_names] + [5])
        lines = [f"accuracy {self.accuracy:.4f} · macro_f1 {self.macro_f1:.4f} · loss {self.loss:.4f} · n {self.n}"]
        lines.append(f"{'class':<{w}}  precision  recall     f1  support")
        for r in self.per_class:
            lines.append(
                f"{r['label']:<{w}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:.4f}  {r['support']:7d}"
            )
        lines.append("confusion (rows = true, columns = predicted):")
        for name, row in zip(self.label_names, self.confusion):
            lines.append(f"{name:<{w}}  " + " ".join(f"{c:6d}" for c in row))
        if self.worst:
            lines.append("most confident mistakes:")
            for r in self.worst:
                t = r["text"] if len(r["text"]) <= 70 else r["text"][:67] + "..."
                lines.append(f"  row {r['row']}: {r['label']} -> {r['predicted']} ({r['confidence']:.3f}) {t!r}")
        return "\n".join(lines)

    def confusion_png(self, *, dpi: int = 100) -> bytes:
        """The confusion matrix as a PNG heat map (rows = true, columns = predicted, counts in
        the cells), drawn with matplotlib's object API (no pyplot state, no display needed)."""
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        cm = np.asarray(self.confusion, dtype=np.int64)  # (C, C)
        C = len(self.label_names)
        side = min(2.2 + 0.45 * C, 9.0)
        fig = Figure(figsize=(side + 0.8, side), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        im = ax.imshow(cm, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(
            range(C), [n[:14] for n in self.label_names], rotation=45 if C > 3 else 0, ha="right" if C > 3 else "center"
        )
        ax.set_yticks(range(C), [n[:14] for n in self.label_names])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion (n={self.n}, accuracy {self.accuracy:.3f})", fontsize=9)
        if C <= 20:
            hi = cm.max() if cm.size else 0
            for i in range(C):
                for j in range(C):
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if cm[i, j] > hi / 2 else "black",
                    )
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def _repr_html_(self) -> str:
        import base64

        e = html.escape
        head = (
            f"<p><b>accuracy</b> {self.accuracy:.4f} &middot; <b>macro_f1</b> {self.macro_f1:.4f} "
            f"&middot; <b>loss</b> {self.loss:.4f} &middot; <b>n</b> {self.n}</p>"
        )
        rows = "".join(
            f"<tr><td>{e(r['label'])}</td><td>{r['precision']:.4f}</td><td>{r['recall']:.4f}</td>"
            f"<td>{r['f1']:.4f}</td><td>{r['support']}</td></tr>"
            for r in self.per_class
        )
        per = (
            "<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>"
        )
        cm_head = "".join(f"<th>{e(n)}</th>" for n in self.label_names)
        cm_rows = "".join(
            f"<tr><th>{e(n)}</th>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
            for n, row in zip(self.label_names, self.confusion)
        )
        cm = (
            "<table><caption>confusion: rows = true, columns = predicted</caption>"
            f"<thead><tr><th></th>{cm_head}</tr></thead><tbody>{cm_rows}</tbody></table>"
        )
        try:
            png = base64.b64encode(self.confusion_png()).decode("ascii")
            cm += f"<img class='llmos-confusion' alt='confusion matrix' src='data:image/png;base64,{png}'/>"
        except ImportError:  # matplotlib absent: the table above still shows the counts
            pass
        worst = ""
        if self.worst:
            wr = "".join(
                f"<tr><td>{r['row']}</td><td>{e(r['label'])}</td><td>{e(r['predicted'])}</td><td>{r['confidence']:.3f}</td>"
                f"<td style='text-align:left'>{e(r['text'][:300])}</td></tr>"
                for r in self.worst
            )
            worst = (
                "<table><caption>most confident mistakes</caption><thead><tr><th>row</th><th>true</th>"
                f"<th>predicted</th><th>confidence</th><th>text</th></tr></thead><tbody>{wr}</tbody></table>"
            )
        return f"<div class='llmos-eval'>{head}{per}{cm}{worst}</div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": str(self), "text/html": self._repr_html_()}


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        labels: ``(n,)`` true class ids in 0..num_classes-1.
        predictions: ``(n,)`` predicted class ids.
        num_classes: C.

    Returns:
        dict with ``accuracy``, ``macro_f1``, ``precision``, ``recall``, ``f1``, ``support``
        (each ``(C,)`` lists) and ``confusion`` (``(C, C)``, rows = true). Definitions in the
        module docstring.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    tp = np.diag(cm).astype(np.float64)
    pred_count = cm.sum(axis=0).astype(np.float64)  # TP + FP
    true_count = cm.sum(axis=1).astype(np.float64)  # TP + FN (support)
    precision = np.divide(tp, pred_count, out=np.zeros_like(tp), where=pred_count > 0)
    recall = np.divide(tp, true_count, out=np.zeros_like(tp), where=true_count > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (pred_count > 0) | (true_count > 0)
    return {
        "accuracy": float((y == p).mean()) if len(y) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": true_count.astype(int).tolist(),
        "confusion": cm.tolist(),
    }


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The batches an evaluation runs: row indices longest-first (stable), cut every
    ``batch_size`` rows. Each batch is padded to its own longest row."""
    order = np.argsort(-lengths, kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def rank_batches(n_batches: int, dist: Any) -> list[int]:
    """Indices of the evaluation batches this rank runs: every ``world_size``-th from its rank
    (all of them without ``dist``). With sharded parameters (FSDP) every forward is a
    collective, so each rank runs the same number of forwards: a rank with one batch fewer runs
    batch 0 again, and the copy is dropped when the results are put together."""
    if dist is None:
        return list(range(n_batches))
    mine = list(range(dist.rank, n_batches, dist.world_size))
    if dist.sharded:
        rounds = -(-n_batches // dist.world_size)
        mine += [0] * (rounds - len(mine))
    return mine


def merge_batches(parts: list[list[tuple[int, Any]]], n_batches: int) -> list[Any]:
    """Put the per-rank results ``[(batch index, value), ...]`` back in batch order, each batch
    counted once: a padded repeat (see :func:`rank_batches`) is dropped.

    Raises:
        RuntimeError: a batch no rank returned.
    """
    out: list[Any] = [None] * n_batches
    seen = [False] * n_batches
    for part in parts:
        for i, value in part:
            if not seen[i]:
                out[i], seen[i] = value, True
    if not all(seen):
        raise RuntimeError(f"distributed evaluation lost batch {seen.index(False)} of {n_batches}")
    return out


def predict_logits(model: Any, tok: Any, *, batch_size: int, pad_id: int, dist: Any = None) -> np.ndarray:
    """Logits ``(n, C)`` float32 for every row of the tokenised column ``tok``, in row order.

    Rows are run longest-first in batches of ``batch_size`` padded to their own longest row
    (:func:`eval_batches`), under ``torch.inference_mode()``; the model is left in eval mode.
    With ``dist`` (a :class:`~.distributed.RankGroup`) the ranks split the same batches
    (:func:`rank_batches`) and gather the logits, so every rank returns the array one process
    computes, every row exactly once.
    """
    import torch

    model.eval()
    device = next(model.parameters()).device
    batches = eval_batches(tok.lengths, batch_size)
    done: list[tuple[int, np.ndarray]] = []
    with torch.inference_mode():
        for i in rank_batches(len(batches), dist):
            b = collate(tok, batches[i], pad_id)
            logits = model(
                input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)
            ).logits  # (B, C)
            done.append((i, logits.float().cpu().numpy()))
    if dist is not None:
        done = list(enumerate(merge_batches(dist.gather(done), len(batches))))
    out: Optional[np.ndarray] = None
    for i, logits in done:
        if out is None:
            out = np.empty((len(tok), logits.shape[-1]), dtype=np.float32)
        out[batches[i]] = logits
    assert out is not None
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    ds: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    batch_size: int = 64,
    max_length: int = 128,
    label_names: Optional[Sequence[str]] = None,
    worst_k: int = 10,
    dist: Any = None,
) -> EvalResult:
    """Run a sequence classifier over ``ds`` and score it against ``ds[label_column]``.

    Args:
        model: a transformers (or peft) sequence-classification model; its forward returns
            ``.logits`` of shape ``(B, C)``. Left in eval mode.
        tokenizer: the model's tokenizer.
        ds: a ``datasets.Dataset``; its label column holds class ids 0..C-1 matching
            ``model.config.label2id``.
        text_column, label_column: column names (defaults "text", "label").
        batch_size: rows per forward pass (default 64).
        max_length: tokens kept per row, special tokens included (default 128).
        label_names: class names by id (default: ``model.config.id2label``).
        worst_k: how many misclassified rows to keep, most confident first (default 10).
        dist: in a distributed run, this rank's :class:`~.distributed.RankGroup`: the ranks
            split the batches and gather the logits (:func:`predict_logits`), so every rank
            gets the result one process computes from the same weights, bit for bit.

    Returns:
        :class:`EvalResult`. Prediction = argmax over the class dimension (-1) of the logits.
        Definitions of the metrics: module docstring.

    Raises:
        NotFoundError: unknown column. UsageError: empty dataset, labels outside 0..C-1,
        ``label_names`` of the wrong length, or a model whose output has no class dimension.
    """
    from ..errors import UsageError

    t0 = time.perf_counter()
    check_columns(ds, [text_column, label_column], "eval dataset")
    num_labels = int(getattr(model.config, "num_labels", 0) or 0)
    if label_names is None:
        id2label = getattr(model.config, "id2label", None) or {}
        label_names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_labels)]
    label_names = [str(n) for n in label_names]
    if num_labels and len(label_names) != num_labels:
        raise UsageError(
            f"label_names has {len(label_names)} names but the model has {num_labels} classes; pass {num_labels} "
            "names or none"
        )
    C = len(label_names)
    if C < 1:
        raise UsageError(
            "the model has no classification labels (config.num_labels is 0); load it for seq-cls with num_labels="
        )
    labels = read_labels(ds, label_column, C, "eval dataset")
    tok = tokenize_column(tokenizer, ds, text_column, max_length)
    logits = predict_logits(model, tok, batch_size=batch_size, pad_id=pad_id_for(tokenizer, model.config), dist=dist)
    if logits.shape[-1] != C:
        raise UsageError(
            f"the model returns {logits.shape[-1]} logits per row but has {C} labels; reload it with num_labels={C}"
        )
    preds = logits.argmax(axis=-1)  # (n,) over the class dimension
    # log-softmax in float64 for the loss and the confidences
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    loss = float(-logp[np.arange(len(labels)), labels].mean())
    m = classification_metrics(labels, preds, C)
    per_class = [
        {
            "label": label_names[c],
            "precision": m["precision"][c],
            "recall": m["recall"][c],
            "f1": m["f1"][c],
            "support": m["support"][c],
        }
        for c in range(C)
    ]
    wrong = np.nonzero(preds != labels)[0]
    conf = np.exp(logp[np.arange(len(preds)), preds])  # softmax probability of the prediction
    worst_rows = wrong[np.argsort(-conf[wrong], kind="stable")][: max(0, worst_k)]
    worst = []
    if len(worst_rows):
        texts = ds.select([int(i) for i in worst_rows])[text_column]
        for i, text in zip(worst_rows, texts):
            worst.append(
                {
                    "row": int(i),
                    "text": as_text(text),
                    "label": label_names[labels[i]],
                    "predicted": label_names[preds[i]],
                    "confidence": float(conf[i]),
                }
            )
    return EvalResult(
        accuracy=m["accuracy"],
        macro_f1=m["macro_f1"],
        loss=loss if math.isfinite(loss) else float("nan"),
        n=int(len(labels)),
        label_names=label_names,
        per_class=per_class,
        confusion=m["confusion"],
        worst=worst,
        predictions=preds,
        logits=logits,
        wall_s=time.perf_counter() - t0,
    )
