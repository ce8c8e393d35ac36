"""Supervised fine-tuning data for causal LMs: prompt/response pairs → token ids with the loss
masked to the response, dynamic padding, and the held-out loss / perplexity.

Each row is rendered the way the model will later be asked (``%llm chat``): with a chat template,
the prompt is the user turn plus the generation prompt
(``apply_chat_template([user], add_generation_prompt=True)``), and the response is whatever the
template adds for the assistant turn (the text, then e.g. ``<|im_end|>\\n``). Without a template,
prompt and response are concatenated verbatim and the response ends with the eos token. Prompt and
response are tokenised separately, so the mask boundary is exact: labels are -100 on the prompt
(and on padding), the token ids on the response. This is "completion-only" loss, as TRL's
``SFTTrainer(completion_only_loss=True)``
(https://huggingface.co/docs/trl/sft_trainer#train-on-completion-only).

Loss: next-token cross-entropy, position t predicts token t+1 (logits ``[:, :-1]`` against labels
``[:, 1:]``), summed over response tokens and divided by the response tokens of the optimizer
step — nats per response token. Perplexity = exp(loss).
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from .batching import as_text, check_columns, pad_id_for

IGNORE_INDEX = -100  # labels ignored by torch.nn.functional.cross_entropy(ignore_index=-100)


@dataclass(frozen=True)
class SFTTokenized:
    """Token ids and labels of prompt/response rows, stored flat like ``batching.Tokenized``.

    Row i is ``ids[offsets[i]:offsets[i+1]]`` with ``labels`` of the same span
    (``IGNORE_INDEX`` on prompt tokens). ``targets[i]``: response tokens of row i that are
    predicted (label != -100 at positions ≥ 1 — position 0 has no previous token).
    """

    ids: np.ndarray  # (total_tokens,) int64
    labels: np.ndarray  # (total_tokens,) int64
    offsets: np.ndarray  # (n_rows + 1,) int64
    targets: np.ndarray  # (n_rows,) int64

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row, ``(n_rows,) int64``."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def render_pair(tokenizer: Any, prompt: str, response: str) -> tuple[str, str]:
    """The prompt text and the response text of one row, as the model sees them.

    With a chat template: ``prompt`` = the rendered user turn with the generation prompt;
    ``response`` = the rest of the rendered two-turn conversation (the reply and the template's
    end-of-turn tokens). Without one: the prompt verbatim, and the response followed by the eos
    token (when the tokenizer has one).
    """
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        p = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(p):
            return p, full[len(p) :]
        return p, response + (tokenizer.eos_token or "")  # a template that rewrites earlier turns
    return prompt, response + (getattr(tokenizer, "eos_token", None) or "")


def tokenize_pairs(tokenizer: Any, ds: Any, prompt_column: str, response_column: str, max_length: int) -> SFTTokenized:
    """Tokenise every prompt/response row of ``ds`` (see :func:`render_pair`), truncated on the
    right to ``max_length`` tokens (prompt + response).

    Without a chat template the prompt gets the tokenizer's special tokens (e.g. BOS); rendered
    templates already hold theirs. None/NaN cells count as "".

    Raises:
        NotFoundError: a missing column. UsageError: an empty dataset, or no row keeps a single
            response token within ``max_length`` (the prompts are too long).
    """
    check_columns(ds, [prompt_column, response_column], "dataset")
    prompts = [as_text(v) for v in ds[prompt_column]]
    responses = [as_text(v) for v in ds[response_column]]
    templated = bool(getattr(tokenizer, "chat_template", None))
    ptexts, rtexts = zip(*(render_pair(tokenizer, p, r) for p, r in zip(prompts, responses)))
    pids = tokenizer(list(ptexts), add_special_tokens=not templated, return_attention_mask=False)["input_ids"]
    rids = tokenizer(list(rtexts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    ids_parts, lab_parts = [], []
    lengths = np.zeros(len(prompts), dtype=np.int64)
    targets = np.zeros(len(prompts), dtype=np.int64)
    for i, (p, r) in enumerate(zip(pids, rids)):
        ids = (list(p) + list(r))[:max_length]
        lab = ([IGNORE_INDEX] * len(p) + list(r))[:max_length]
        if not ids:
            ids, lab = [pad_id_for(tokenizer)], [IGNORE_INDEX]
        lengths[i] = len(ids)
        targets[i] = sum(1 for t in lab[1:] if t != IGNORE_INDEX)
        ids_parts.append(np.asarray(ids, dtype=np.int64))
        lab_parts.append(np.asarray(lab, dtype=np.int64))
    if targets.sum() == 0:
        raise UsageError(
            f"no row keeps a response token within max_length={max_length} (the prompts fill it); "
            f"raise max_length or shorten the prompts"
        )
    offsets = np.zeros(len(prompts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return SFTTokenized(np.concatenate(ids_parts), np.concatenate(lab_parts), offsets, targets)


def collate_sft(tok: SFTTokenized, rows: np.ndarray, pad_id: int) -> dict[str, Any]:
    """Pad ``rows`` on the right to their longest row (dynamic padding).

    Returns torch tensors ``input_ids``, ``attention_mask`` (1 = real token) and ``labels``
    (``IGNORE_INDEX`` on prompt and padding), each ``(B, L) int64``.
    """
    import torch

    starts, ends = tok.offsets[rows], tok.offsets[rows + 1]
    B, L = len(rows), int((ends - starts).max())  # batch, longest row in the batch
    ids = np.full((B, L), pad_id, dtype=np.int64)
    mask = np.zeros((B, L), dtype=np.int64)
    labels = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
    for i, (s, e) in enumerate(zip(starts, ends)):
        ids[i, : e - s] = tok.ids[s:e]
        labels[i, : e - s] = tok.labels[s:e]
        mask[i, : e - s] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
    }


def token_loss_sum(logits: Any, labels: Any) -> Any:
    """Summed next-token cross-entropy (nats) over the labelled positions.

    Args:
        logits: ``(B, L, V)``; labels: ``(B, L)`` with ``IGNORE_INDEX`` where no loss is taken.

    Returns:
        A scalar tensor: Σ over t, labels[:, t+1] != -100, of -log softmax(logits[:, t])[labels[:, t+1]].
    """
    import torch.nn.functional as F

    V = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """``(decoder, lm_head)`` of a (peft-wrapped) ``*ForCausalLM`` whose logits are exactly
    ``lm_head(decoder(...).last_hidden_state)``; ``None`` when that is not known to hold
    (logit soft-capping or scaling in the config, an unusual layout)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling"):
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            return None
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule) or isinstance(base, FSDPModule):
        return None  # FSDP2: the root's own parameters are gathered only by its own forward
    prefix = getattr(base, "base_model_prefix", None)
    decoder = getattr(base, prefix, None) if prefix else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def response_loss_sum(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
    """:func:`token_loss_sum` of ``model`` on one batch, projecting onto the vocabulary only the
    hidden states that predict a response token.

    A prompt of 80 tokens with a one-word answer needs 1–2 of the 80 ``(V,)`` logit rows (V =
    49,152 for SmolLM2); skipping the rest saves the largest matmul and its gradient. The result
    equals ``token_loss_sum(model(...).logits, labels)`` up to float rounding; models whose logits
    are not a plain projection of the last hidden state (see :func:`_decoder_and_head`) take that
    path instead.

    Args:
        input_ids, attention_mask, labels: ``(B, L)`` int64 on the model's device (labels
            ``IGNORE_INDEX`` where no loss is taken).

    Returns:
        A scalar tensor (nats, summed over the response tokens).
    """
    import torch.nn.functional as F

    parts = _decoder_and_head(model)
    if parts is None:
        return token_loss_sum(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
    target = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    keep = target != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep])  # (N, V), N = response tokens in the batch
    return F.cross_entropy(logits.float(), target[keep], reduction="sum")


@dataclass
class LMEvalResult:
    """Held-out score of a causal LM on prompt/response rows.

    Attributes:
        loss: mean next-token cross-entropy over response tokens (nats per token).
        perplexity: exp(loss).
        n: rows; tokens: response tokens scored; wall_s: seconds (tokenisation included).
    """

    loss: float
    perplexity: float
    n: int
    tokens: int
    wall_s: float = 0.0

    def to_metrics(self) -> dict[str, Any]:
        """Headline numbers for registries and manifests: loss, perplexity, n, tokens."""
        return {"loss": self.loss, "perplexity": self.perplexity, "n": self.n, "tokens": self.tokens}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable."""
        return dict(self.to_metrics(), wall_s=self.wall_s)

    def __str__(self) -> str:
        return (
            f"loss {self.loss:.4f} nats/token · perplexity {self.perplexity:.3f} · n {self.n} rows · "
            f"{self.tokens} response tokens"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": str(self), "text/html": f"<div class='llmos-eval'><p>{html.escape(str(self))}</p></div>"}


def evaluate_causal_lm(
    model: Any,
    tokenizer: Any,
    ds: Any,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    batch_size: int = 16,
    max_length: int = 512,
    dist: Any = None,
) -> LMEvalResult:
    """Loss and perplexity of a causal LM on the responses of ``ds`` given its prompts.

    Args:
        model: a transformers (or peft) causal LM; forward returns ``.logits`` ``(B, L, V)``.
            Left in eval mode.
        tokenizer: its tokenizer (its chat template renders the prompts; see :func:`render_pair`).
        ds: ``datasets.Dataset`` with ``prompt_column`` and ``response_column``.
        batch_size: rows per forward pass (default 16); max_length: tokens per row (default 512).
        dist: in a distributed run, this rank's :class:`~.distributed.RankGroup`: the ranks split
            the batches, and the per-batch sums are added in batch order, as one process adds them.

    Returns:
        :class:`LMEvalResult` (loss in nats per response token; definitions in the module docstring).

    Raises:
        NotFoundError: unknown column. UsageError: empty dataset or no response token kept.
    """
    import torch

    t0 = time.perf_counter()
    tok = tokenize_pairs(tokenizer, ds, prompt_column, response_column, max_length)
    pad_id = pad_id_for(tokenizer, getattr(model, "config", None))
    device = next(model.parameters()).device
    model.eval()
    from .evaluate import eval_batches, merge_batches, rank_batches

    batches = eval_batches(tok.lengths, batch_size)
    done: list[tuple[int, tuple[float, int]]] = []
    with torch.inference_mode():
        for i in rank_batches(len(batches), dist):
            b = collate_sft(tok, batches[i], pad_id)
            nll = float(
                response_loss_sum(
                    model, b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device)
                )
            )
            done.append((i, (nll, int((b["labels"][:, 1:] != IGNORE_INDEX).sum()))))
    sums = merge_batches(dist.gather(done), len(batches)) if dist is not None else [v for _, v in done]
    total, count = 0.0, 0
    for nll, n in sums:  # in batch order, as one process adds them
        total += nll
        count += n
    loss = total / max(count, 1)
    return LMEvalResult(
        loss=loss,
        perplexity=math.exp(loss) if loss < 700 else float("inf"),
        n=len(tok),
        tokens=count,
        wall_s=time.perf_counter() - t0,
    )
