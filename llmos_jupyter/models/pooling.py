"""Sequence classification with decoder models (Llama, Mistral, Qwen2, … ``*ForSequenceClassification``):
pool the last *real* token, found from ``attention_mask``.

transformers' ``GenericForSequenceClassification`` pools the rightmost token that is not
``pad_token_id``. Llama-type tokenizers have no pad token, so the pad token is usually the eos
token (SmolLM2: ``<|im_end|>``, id 2); a text that really ends with eos then has that token taken
for padding and pooled one position early. The mask knows which tokens are real, on either
padding side: :func:`pool_by_attention_mask` makes a model pool at the last position where
``attention_mask == 1`` and derive ``position_ids`` from the mask
(``cumsum(mask) - 1``), so a left-padded row sees the same positions as the row run alone —
the same rule ``generate`` applies to left-padded prompts.
"""

from __future__ import annotations

import types
from typing import Any


def _masked_forward(
    self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None, **kwargs
):
    """``forward`` of a ``GenericForSequenceClassification`` model pooling by ``attention_mask``.

    Args:
        input_ids: ``(B, L)``; attention_mask: ``(B, L)``, 1 = real token (either padding side);
        position_ids: default ``clamp(cumsum(attention_mask) - 1, 0)``; labels: ``(B,)`` class ids.

    Returns:
        ``SequenceClassifierOutputWithPast`` with ``logits`` ``(B, num_labels)`` (and ``loss``
        when ``labels`` are given), no cache. Without ``attention_mask`` the class's own forward runs.
    """
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutputWithPast

    if attention_mask is None or attention_mask.dim() != 2:
        return type(self).forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **kwargs,
        )
    mask = attention_mask.to(torch.long)
    if position_ids is None:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs.setdefault("use_cache", False)
    out = getattr(self, self.base_model_prefix)(
        input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs
    )
    hidden = out.last_hidden_state  # (B, L, H)
    B, L = mask.shape
    last = (torch.arange(L, device=mask.device) * mask).argmax(-1)  # (B,) last real token
    logits = self.score(hidden[torch.arange(B, device=hidden.device), last.to(hidden.device)])  # (B, C)
    loss = None
    if labels is not None:
        loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
    return SequenceClassifierOutputWithPast(
        loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
    )


def pool_by_attention_mask(model: Any) -> bool:
    """Make a decoder ``*ForSequenceClassification`` model pool its last real token by
    ``attention_mask`` (see the module docstring). The weights, ``save_pretrained`` output and
    peft wrapping are unchanged; only this instance's ``forward`` is replaced.

    Returns:
        True when ``model`` is a ``GenericForSequenceClassification`` (and was changed), else False
        (encoder classifiers such as BERT pool ``[CLS]`` and need nothing).
    """
    try:
        from transformers.modeling_layers import GenericForSequenceClassification
    except ImportError:  # an older transformers: keep its pooling
        return False
    if not isinstance(model, GenericForSequenceClassification):
        return False
    model.forward = types.MethodType(_masked_forward, model)
    return True
