"""Class probabilities of a ``seq-cls`` model: softmax over the logits of a padded batch.

Used by ``api.classify`` (cells) and ``POST /v1/classify`` (``%llm serve``), so both answer the
same. Padding follows the tokenizer's side; Llama-type classifiers pool the last real token by
the attention mask (:mod:`.pooling`), so a padded row equals the text alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def probabilities(model, tokenizer, texts: Sequence[str], *, max_length: int = 256) -> tuple[np.ndarray, list[int]]:
    """``softmax(model(texts).logits)`` for N texts.

    Args:
        model: a ``*ForSequenceClassification`` model, on its device.
        tokenizer: its tokenizer (a pad token set).
        texts: N strings; each is truncated to ``max_length`` tokens (special tokens included).

    Returns:
        ``(probs (N, num_labels) float32, tokens per text after truncation)``.
    """
    import torch

    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    counts = [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()]
    enc = enc.to(model.device)
    with torch.inference_mode():
        probs = model(**enc).logits.float().softmax(-1).cpu().numpy()
    return probs, counts
