"""How long a text the encoders read: the one rule for classify, embed and eval inputs.

Texts longer than the model reads are truncated to ``min(max_length, model_positions(rec))``
tokens and the truncation is *said* (:func:`fit_texts`); generation refuses instead (see
:func:`llmos_jupyter.models.engines.base.plan_tokens`). ``rec`` is a
:class:`~llmos_jupyter.resources.manager.ModelRecord` (anything with ``model``, ``tokenizer``
and ``alias``).
"""

from __future__ import annotations

import sys


def model_positions(rec) -> int:
    """Tokens per text the model of ``rec`` can read: its ``config.max_position_embeddings``,
    or the tokenizer's ``model_max_length`` when that is smaller (RoBERTa-type models reserve
    two positions)."""
    n = getattr(getattr(rec.model, "config", None), "max_position_embeddings", None)
    n = n if isinstance(n, int) and n > 0 else 10**9
    m = getattr(rec.tokenizer, "model_max_length", None)
    if isinstance(m, int) and 0 < m < n:
        n = m
    return n if n < 10**9 else 512


def fit_texts(rec, texts: list[str], max_length: int, what: str) -> int:
    """The rule for inputs longer than a model reads, for the encoders (classify, embed, eval):
    truncate to ``min(max_length, model_positions(rec))`` tokens and *say so* — one note on
    stderr with how many texts were cut and the longest length. (Generation refuses instead:
    see :func:`llmos_jupyter.models.engines.base.plan_tokens`.) Returns the token limit to use."""
    limit = min(int(max_length), model_positions(rec))
    lengths = [len(ids) for ids in rec.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
    cut = [n for n in lengths if n > limit]
    if cut:
        many = f"{len(cut)} of {len(texts)} texts are" if len(texts) > 1 else f"the text ({cut[0]:,} tokens) is"
        longest = f" (longest {max(cut):,})" if len(texts) > 1 else ""
        print(
            f"llmos: note: {many} longer than the {limit:,} tokens '{rec.alias}' reads here{longest}; {what} "
            f"used the first {limit:,} tokens{' of each' if len(cut) > 1 else ''}",
            file=sys.stderr,
            flush=True,
        )
    return limit
