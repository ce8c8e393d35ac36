"""Sentence embeddings with mean pooling, as sentence-transformers computes them.

For ``all-MiniLM-L6-v2`` sentence-transformers runs ``Transformer -> Pooling(mean) -> Normalize``
(``modules.json`` and ``1_Pooling/config.json`` of the model:
``pooling_mode_mean_tokens: true``, ``max_seq_length: 256`` in ``sentence_bert_config.json``).
:func:`embed` does the same with plain transformers, as the model card's "Usage (HuggingFace
Transformers)" recipe does (https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), and
adds two things that change speed, not values:

* texts are tokenised once and batched in order of token length, so a batch pads to its own
  longest text rather than to the longest of a random batch (on the 8,530 Rotten Tomatoes rows,
  2 CPU cores: see ``benchmarks/benchmark_search.py`` for the measured ratio);
* ``torch.inference_mode`` instead of ``no_grad``.

Mean pooling (sentence-transformers ``Pooling``, https://sbert.net/docs/package_reference/
sentence_transformer/models.html#pooling)::

    e = sum_t(h[t] * m[t]) / max(sum_t m[t], 1e-9)     h: (T, D) last hidden state, m: (T,) mask

Run ``python -m llmos_jupyter.models.embedding MODEL_DIR "some text"`` to print a vector's head.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def as_text(value: Any) -> str:
    """The string a tokenizer is given for one cell: ``None`` -> ``""``, other non-strings ->
    ``str(value)`` (so ``42`` embeds as ``"42"``); strings unchanged. Never raises."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def mean_pool(last_hidden_state, attention_mask):
    """Mean of the token vectors where ``attention_mask`` is 1.

    Args:
        last_hidden_state: ``(B, T, D)`` tensor (any float dtype; pooled in float32).
        attention_mask: ``(B, T)`` tensor of 0/1.

    Returns:
        ``(B, D)`` float32 tensor. A row with no tokens gives zeros (the 1e-9 clamp, as
        sentence-transformers does).
    """
    import torch

    mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
    summed = (last_hidden_state.to(torch.float32) * mask).sum(dim=1)  # (B, D)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def embed(
    model, tokenizer, texts: Sequence[Any], *, batch_size: int = 64, max_length: int = 256, normalize: bool = True
) -> np.ndarray:
    """Embed ``texts`` with ``model`` by mean pooling over the attention mask.

    Args:
        model: a transformers encoder (``AutoModel``, e.g. BertModel) whose first output is the
            last hidden state ``(B, T, D)``. Run in eval mode for the call (its mode is restored),
            on the device its parameters are on.
        tokenizer: the model's tokenizer (fast or slow); its pad token id pads batches.
        texts: ``N`` cells; ``None`` becomes ``""`` and numbers their ``str`` (never raises on a
            non-string cell).
        batch_size: texts per forward pass (default 64).
        max_length: tokens kept per text, special tokens included (default 256, the
            ``max_seq_length`` of all-MiniLM-L6-v2); longer texts are truncated.
        normalize: L2-normalise each vector (default True, as the model's ``2_Normalize`` module
            does), so a dot product is the cosine similarity.

    Returns:
        ``(N, D)`` float32 array in the order of ``texts`` (``D`` = 384 for all-MiniLM-L6-v2).

    Raises:
        UsageError: ``batch_size`` or ``max_length`` below 1.
    """
    from ..errors import UsageError

    if int(batch_size) < 1 or int(max_length) < 1:
        raise UsageError(f"batch_size and max_length must be >= 1 (got {batch_size}, {max_length})")
    strings = [as_text(t) for t in texts]
    if not strings:
        dim = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
        return np.zeros((0, dim), dtype=np.float32)
    # One tokenizer call for all texts (fast tokenizers batch this in Rust), no padding yet.
    ids = tokenizer(strings, truncation=True, max_length=int(max_length), padding=False)["input_ids"]
    return embed_ids(model, ids, pad_id=tokenizer.pad_token_id, batch_size=batch_size, normalize=normalize)


def embed_ids(
    model, ids: Sequence[Sequence[int]], *, pad_id: int | None = None, batch_size: int = 64, normalize: bool = True
) -> np.ndarray:
    """Embed texts already tokenised (``ids``: N lists of token ids of the model's vocabulary,
    special tokens included as the model expects them) by mean pooling; see :func:`embed`.

    Args:
        pad_id: the id that pads a batch (masked out; default 0).

    Returns:
        ``(N, D)`` float32 array in the order of ``ids``.
    """
    import torch

    dim = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
    if not ids:
        return np.zeros((0, dim), dtype=np.float32)
    order = np.argsort([-len(x) for x in ids], kind="stable")  # longest first: OOM shows early
    pad_id = pad_id if pad_id is not None else 0
    device = next(model.parameters()).device

    out = None  # (N, D), allocated once D is known from the first batch
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), int(batch_size)):
                rows = order[start : start + int(batch_size)]
                T = max(len(ids[i]) for i in rows)  # pad to this batch's longest text
                input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), T), dtype=torch.long)
                for j, i in enumerate(rows):
                    n = len(ids[i])
                    input_ids[j, :n] = torch.tensor(list(ids[i]), dtype=torch.long)
                    mask[j, :n] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                hidden = model(input_ids=input_ids, attention_mask=mask)[0]  # (B, T, D)
                vec = mean_pool(hidden, mask)  # (B, D) float32
                if normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=1)
                if out is None:
                    out = np.empty((len(ids), vec.shape[1]), dtype=np.float32)
                out[rows] = vec.cpu().numpy()
    finally:
        model.train(was_training)
    return out


if __name__ == "__main__":  # pragma: no cover - manual check
    import sys

    from transformers import AutoModel, AutoTokenizer

    _dir, *_texts = sys.argv[1:]
    _v = embed(AutoModel.from_pretrained(_dir), AutoTokenizer.from_pretrained(_dir), _texts or ["hello"])
    print(_v.shape, _v[:, :6])
