"""The two tasks a fine-tune trains, one small object each, chosen once per run (:func:`task_for`).

* :class:`SeqCls` (``task="seq-cls"``): text/label rows, cross-entropy over the rows of a batch,
  evaluated by accuracy and macro-F1 (:func:`~.evaluate.evaluate`).
* :class:`CausalLM` (``task="causal-lm"``): prompt/response rows rendered with the chat template,
  cross-entropy over the response tokens only (:mod:`.sft`), evaluated by loss and perplexity.

Each answers the same questions for the training loop (``training/finetune.py``): is this model
and data right for me (``check``), how is a row tokenised (``tokenize``) and batched
(``collate``), what is a batch's summed loss (``loss_sum``) and over how many units it is
averaged (``count``: rows or response tokens), and how is the model evaluated (``evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .batching import check_columns, collate, read_labels, tokenize_column
from .checkpoint import is_peft
from .sft import IGNORE_INDEX, collate_sft, evaluate_causal_lm, response_loss_sum, tokenize_pairs


def is_causal_lm(model: Any) -> bool:
    """True for a transformers ``*ForCausalLM`` / ``*LMHeadModel`` (also inside a peft model)."""
    base = model.get_base_model() if is_peft(model) else model
    return type(base).__name__.endswith(("ForCausalLM", "LMHeadModel"))


@dataclass(frozen=True)
class SeqCls:
    """Sequence classification on ``text_column`` / ``label_column`` (class ids 0..C-1)."""

    text_column: str = "text"
    label_column: str = "label"
    name = "seq-cls"
    has_head = True  # a classification head no run trained yet is re-initialised from the seed

    def check(self, model: Any, train: Any, eval: Any) -> Any:  # noqa: A002 - the loop's name for the eval set
        """Check the model's labels and the datasets' columns and labels; returns the training
        labels, (N,) int64. Raises UsageError / NotFoundError (one line)."""
        num_labels = int(getattr(model.config, "num_labels", 0) or 0)
        if num_labels < 2:
            raise UsageError(
                f"the model has num_labels={num_labels}; a seq-cls fine-tune needs 2 or more classes: "
                f"reload it for seq-cls with num_labels= set to the number of labels"
            )
        check_columns(train, [self.text_column, self.label_column], "train dataset")
        if eval is not None:
            check_columns(eval, [self.text_column, self.label_column], "eval dataset")
        labels = read_labels(train, self.label_column, num_labels, "train dataset")
        if eval is not None:
            read_labels(eval, self.label_column, num_labels, "eval dataset")
        return labels

    def tokenize(self, tokenizer: Any, ds: Any, max_length: int) -> Any:
        return tokenize_column(tokenizer, ds, self.text_column, max_length)

    def count(self, tok: Any, group: list[Any]) -> int:
        """Units the loss of ``group`` (micro-batches of row indices) is averaged over: rows."""
        return sum(len(rows) for rows in group)

    def collate(self, tok: Any, rows: Any, pad_id: int, labels: Any) -> dict[str, Any]:
        return collate(tok, rows, pad_id, labels)

    def loss_sum(self, model: Any, ids: Any, mask: Any, y: Any) -> Any:
        """Summed cross-entropy of the rows; ids, mask (B, L), y (B,)."""
        import torch.nn.functional as F

        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, C)
        return F.cross_entropy(logits.float(), y, reduction="sum")

    def mean_loss(self, model: Any, ids: Any, mask: Any, y: Any) -> float:
        """Mean cross-entropy per row of one batch (nats)."""
        import torch.nn.functional as F

        return float(F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), y))

    def evaluate(self, model: Any, tokenizer: Any, ds: Any, cfg: Any, dist: Any = None) -> Any:
        from .evaluate import evaluate

        return evaluate(
            model,
            tokenizer,
            ds,
            text_column=self.text_column,
            label_column=self.label_column,
            batch_size=max(cfg.batch_size, 64),
            max_length=cfg.max_length,
            dist=dist,
        )

    def id2label(self, mconf: Any) -> dict[int, str]:
        return {int(k): str(v) for k, v in (getattr(mconf, "id2label", None) or {}).items()}


@dataclass(frozen=True)
class CausalLM:
    """Supervised fine-tuning of a causal LM on ``prompt_column`` / ``response_column`` pairs."""

    prompt_column: str = "prompt"
    response_column: str = "response"
    name = "causal-lm"
    has_head = False

    def check(self, model: Any, train: Any, eval: Any) -> Any:  # noqa: A002 - the loop's name for the eval set
        """Check the model is a causal LM and the datasets have the columns; returns None (no labels)."""
        if not is_causal_lm(model):
            raise UsageError(
                f"task='causal-lm' needs a causal LM (a *ForCausalLM model), got {type(model).__name__}; "
                f"load it with --task causal-lm"
            )
        check_columns(train, [self.prompt_column, self.response_column], "train dataset")
        if eval is not None:
            check_columns(eval, [self.prompt_column, self.response_column], "eval dataset")
        return None

    def tokenize(self, tokenizer: Any, ds: Any, max_length: int) -> Any:
        return tokenize_pairs(tokenizer, ds, self.prompt_column, self.response_column, max_length)

    def count(self, tok: Any, group: list[Any]) -> int:
        """Units the loss of ``group`` is averaged over: response tokens."""
        return int(sum(tok.targets[rows].sum() for rows in group))

    def collate(self, tok: Any, rows: Any, pad_id: int, labels: Any) -> dict[str, Any]:
        return collate_sft(tok, rows, pad_id)

    def loss_sum(self, model: Any, ids: Any, mask: Any, y: Any) -> Any:
        """Summed cross-entropy of the response tokens; ids, mask, y (B, L), y -100 off the response."""
        return response_loss_sum(model, ids, mask, y)

    def mean_loss(self, model: Any, ids: Any, mask: Any, y: Any) -> float:
        """Mean cross-entropy per response token of one batch (nats)."""
        per = max(int((y[:, 1:] != IGNORE_INDEX).sum()), 1)
        return float(response_loss_sum(model, ids, mask, y)) / per

    def evaluate(self, model: Any, tokenizer: Any, ds: Any, cfg: Any, dist: Any = None) -> Any:
        return evaluate_causal_lm(
            model,
            tokenizer,
            ds,
            prompt_column=self.prompt_column,
            response_column=self.response_column,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            dist=dist,
        )

    def id2label(self, mconf: Any) -> dict[int, str]:
        return {}


def task_for(
    task: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    prompt_column: str = "prompt",
    response_column: str = "response",
) -> Any:
    """The task object of ``task``: "causal-lm" (or True) → :class:`CausalLM`, else :class:`SeqCls`;
    a task object is returned as it is."""
    if isinstance(task, (SeqCls, CausalLM)):
        return task
    if task is True or task == "causal-lm":
        return CausalLM(prompt_column, response_column)
    return SeqCls(text_column, label_column)
